/**
 * `createRealtimeClient`: one connection (WebSocket, or SSE + HTTP) that
 * reconnects with jittered backoff, re-authenticates with a fresh token,
 * restores subscriptions from their positions, presence and ephemeral
 * subscriptions after every `ready`, and keeps publishes until answered.
 */
import { type ClientOptions, endpoints, type RealtimeClient } from './api.js';
import { backoffDelay } from './backoff.js';
import { memoryCursorStore } from './cursor-store.js';
import {
  ClientClosedError,
  ConnectionError,
  QueueFullError,
  ServerError,
  TimeoutError,
  TokenError,
  UnauthorizedError,
  ZpsError,
} from './errors.js';
import type { Link, LinkEvents } from './link.js';
import { tokenSubject } from './jwt.js';
import type { Presence, PresenceListener, PresenceSet } from './presence.js';
import type { ClientMessage, ServerMessage } from './protocol.js';
import { SubscriptionSet } from './subscriptions.js';
import type { EventSourceConstructor, FetchLike } from './transport-sse.js';
import { openWebSocket, type WebSocketConstructor } from './transport-ws.js';
import type { ConnectionState, EphemeralEvent, PublishResult, RoomPosition } from './types.js';

/** The client's public types (defined in api.ts). */
export type { ClientOptions, PublishOptions, RealtimeClient } from './api.js';

const randomId = (): string =>
  (globalThis.crypto as Crypto | undefined)?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

interface Pending {
  msg: ClientMessage;
  resolve: (r: PublishResult) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
}

/** Creates a client and starts connecting at once. */
export function createRealtimeClient(options: ClientOptions): RealtimeClient {
  const o = options;
  const { ws: wsUrl, http: httpBase } = endpoints(o.url);
  // Without an explicit id: a device of the token's `sub` (`sub#zps-js-<random>`), which a gateway that
  // verifies tokens accepts; without a readable `sub`, `zps-js-<random>`. Fixed for the client's life
  // (the device part), re-derived when a provider's token names another `sub`.
  const device = `zps-js-${randomId()}`;
  const idFor = (token: string | undefined): string => {
    if (o.subscriberId !== undefined) return o.subscriberId;
    const sub = tokenSubject(token);
    return sub !== undefined && !sub.includes('#') ? `${sub}#${device}` : device;
  };
  let subscriberId = idFor(typeof o.token === 'string' ? o.token : undefined);
  const requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
  const maxQueued = o.maxQueuedMessages ?? 1024;
  const heartbeatMs = o.heartbeatMs ?? 25_000;
  const minMs = o.reconnect?.minMs ?? 250;
  const maxMs = o.reconnect?.maxMs ?? 30_000;
  const WS = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  const fetchFn = o.fetch ?? (globalThis.fetch?.bind(globalThis) as unknown as FetchLike | undefined);
  const ES = o.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  const sseAvailable = !!(ES || fetchFn);
  const mode = o.transport ?? 'auto';
  let useSse = mode === 'sse' || (mode === 'auto' && !WS);
  let compact = o.encoding === 'compact';

  const listeners = { state: new Set<(s: ConnectionState) => void>(), error: new Set<(e: Error) => void>() };
  let state: ConnectionState = { status: 'connecting', transport: useSse ? 'sse' : 'websocket' };
  let link: Link | undefined;
  let phase: 'idle' | 'connecting' | 'open' = 'idle';
  let ready = false;
  let stopped = false;
  let paused = false;
  let attempt = 0;
  let authRetries = 0;
  let authRefused = false;
  /** An `error` about no request and no room before `ready`: why `init` was refused. */
  let initRefusal: ServerError | undefined;
  let wsNeverOpened = 0;
  let generation = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let beat: ReturnType<typeof setInterval> | undefined;
  let lastRx = 0;
  let seq = 0;
  const pending = new Map<string, Pending>();
  const ephQueue: { msg: ClientMessage; done: () => void }[] = [];
  const eph = new Map<string, Set<{ handler: (e: EphemeralEvent) => void; types: string[] | undefined }>>();

  const setState = (s: ConnectionState) => {
    state = s;
    for (const cb of listeners.state) cb(s);
  };
  const report = (e: Error) => {
    for (const cb of listeners.error) cb(e);
  };
  const online = () => ready && !!link;
  const send = (msg: ClientMessage) => {
    if (link && phase === 'open') link.send(msg);
  };

  // Timers of the subscription set (replays, acks), re-armed after each change.
  let timer: ReturnType<typeof setTimeout> | undefined;
  let wakeQueued = false;
  const runTimers = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (stopped) return;
    const next = subs.tick(Date.now());
    if (next !== undefined) timer = setTimeout(runTimers, Math.max(0, next - Date.now()));
  };
  const wake = () => {
    if (wakeQueued) return;
    wakeQueued = true;
    queueMicrotask(() => {
      wakeQueued = false;
      runTimers();
    });
  };

  const subs = new SubscriptionSet({
    send,
    online,
    store: o.cursorStore ?? memoryCursorStore(),
    tune: {
      throttleMs: o.replayThrottleMs ?? 100,
      pageSize: o.replayPageSize ?? 500,
      timeoutMs: requestTimeoutMs,
      maxBuffer: o.maxBufferedEventsPerRoom ?? 1000,
    },
    ackMs: o.ackIntervalMs ?? 100,
    report,
    wake,
  });
  // Presence is a chunk loaded on the first `client.presence(room)` call. Every presence
  // call runs as a callback of that one load, so calls keep their order, before the load
  // and after it.
  let presence: PresenceSet | undefined;
  let presenceLoad: Promise<PresenceSet> | undefined;
  const withPresence = <T>(run: (p: PresenceSet) => T | PromiseLike<T>): Promise<T> =>
    (presenceLoad ??= import('./presence.js').then(
      (m) => (presence = new m.PresenceSet({ send, online, timeoutMs: requestTimeoutMs, timeout: () => new TimeoutError('presence') })),
      (e: unknown) => {
        presenceLoad = undefined; // the next call tries again
        throw e;
      },
    )).then(run);

  const getToken = async (): Promise<string | undefined> => {
    const t = o.token;
    if (typeof t !== 'function') return t;
    let timeout: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        Promise.resolve().then(t),
        new Promise<never>((_, rej) => (timeout = setTimeout(() => rej(new TimeoutError('token provider')), requestTimeoutMs))),
      ]);
    } catch (e) {
      throw e instanceof ZpsError ? e : new TokenError(`token provider failed: ${String(e)}`);
    } finally {
      clearTimeout(timeout);
    }
  };

  const connect = async () => {
    if (stopped || paused || phase !== 'idle') return;
    phase = 'connecting';
    const gen = ++generation;
    const kind = useSse ? 'sse' : 'websocket';
    setState({ status: 'connecting', transport: kind });
    let token: string | undefined;
    try {
      token = await getToken();
    } catch (e) {
      if (gen !== generation) return;
      phase = 'idle';
      report(e as Error);
      return retry();
    }
    if (gen !== generation || stopped || paused) return;
    authRefused = false;
    initRefusal = undefined;
    subscriberId = idFor(token);
    const events: LinkEvents = {
      open: () => {
        if (gen !== generation) return;
        phase = 'open';
        lastRx = Date.now();
        const init: ClientMessage = { type: 'init', subscriberId };
        if (token) init.token = token;
        link!.send(init);
      },
      message: (m) => {
        if (gen === generation) onMessage(m);
      },
      error: report,
      close: (info) => {
        if (gen !== generation) return;
        if (kind === 'websocket' && !info.opened && mode === 'auto' && sseAvailable) wsNeverOpened++;
        if (info.subprotocolRefused) compact = false;
        lost(info.code, info.reason, info.refusal);
      },
    };
    // SSE and compact frames are loaded on first use, so the core bundle stays small.
    if (kind === 'sse') {
      if (!fetchFn) return stop(new ZpsError('unsupported', 'SSE needs fetch'));
      const [{ openSse }, { FetchEventSource }] = await Promise.all([import('./transport-sse.js'), import('./sse-reader.js')]);
      if (gen !== generation || stopped || paused) return;
      const Source = ES ?? class extends FetchEventSource { constructor(url: string) { super(url, fetchFn); } };
      link = openSse({ baseUrl: httpBase, EventSource: Source, fetch: fetchFn, timeoutMs: requestTimeoutMs, ServerError, tokenSubject }, events);
    } else {
      if (!WS) return stop(new ZpsError('unsupported', 'no WebSocket constructor: pass options.WebSocket (e.g. the `ws` package)'));
      const decode = compact ? (await import('./compact.js')).decodeCompactEvent : undefined;
      if (gen !== generation || stopped || paused) return;
      link = openWebSocket(wsUrl, WS, decode, events);
    }
  };

  /** The connection ended (or was given up locally): forget per-connection state. */
  const drop = () => {
    generation++;
    link = undefined;
    phase = 'idle';
    ready = false;
    if (beat) clearInterval(beat);
    beat = undefined;
    subs.onDisconnect();
    presence?.onDisconnect();
    for (const p of pending.values()) p.sent = false;
  };

  const lost = (code: number, reason: string, refused?: ServerError) => {
    const refusal = refused ?? initRefusal;
    const auth = code === 4401 || authRefused;
    // Error 4403 at `init`, then close 4401: the token does not own the subscriber id
    // (it must be the token's `sub` or `sub#device`). Another token cannot fix the id.
    const notOwned = auth && refusal?.code === '4403';
    drop();
    if (stopped || paused) return;
    report(new ConnectionError(code, reason));
    if (auth) {
      const why = refusal ? `${refusal.code}: ${refusal.message}` : reason || String(code);
      if (notOwned) return stop(new UnauthorizedError(`subscriberId ${JSON.stringify(subscriberId)} refused (${why})`, refusal));
      if (typeof o.token !== 'function' || authRetries >= 1) return stop(new UnauthorizedError(`token refused (${why})`, refusal));
      authRetries++;
    }
    if (wsNeverOpened >= 2 && !useSse) useSse = true;
    retry();
  };

  const retry = () => {
    if (stopped || paused) return;
    attempt++;
    const max = o.reconnect?.maxAttempts;
    if (max !== undefined && attempt > max) return stop(new ZpsError('reconnect_exhausted', `gave up after ${max} attempts`));
    const delayMs = backoffDelay(attempt, minMs, maxMs);
    setState({ status: 'reconnecting', attempt, delayMs });
    retryTimer = setTimeout(() => void connect(), delayMs);
  };

  const onReady = (m: Extract<ServerMessage, { type: 'ready' }>) => {
    ready = true;
    attempt = 0;
    authRetries = 0;
    wsNeverOpened = 0;
    setState({ status: 'connected', transport: link!.kind, connectionId: m.connectionId });
    subs.onReady();
    if (eph.size) send({ type: 'subscribe_ephemeral', rooms: [...eph.keys()] });
    presence?.onReady();
    for (const p of pending.values()) {
      send(p.msg);
      p.sent = true;
    }
    for (const e of ephQueue.splice(0)) send(e.msg), e.done();
    if (link!.kind === 'websocket' && heartbeatMs > 0) {
      beat = setInterval(() => {
        if (Date.now() - lastRx > 2 * heartbeatMs) {
          link?.close(4410, 'heartbeat timeout');
          return lost(4410, 'no message from the gateway within 2 × heartbeatMs');
        }
        send({ type: 'ping', id: `h${++seq}` });
      }, heartbeatMs);
    }
  };

  const onMessage = (m: ServerMessage) => {
    lastRx = Date.now();
    switch (m.type) {
      case 'ready':
        return onReady(m);
      case 'event':
        return subs.onEvent(m.data);
      case 'subscribed':
        return subs.onSubscribed(m);
      case 'replay':
        return subs.onReplay(m);
      case 'discontinuity':
        return subs.onDiscontinuityMessage(m);
      case 'published': {
        const p = m.requestId !== undefined ? pending.get(m.requestId) : undefined;
        if (!p) return;
        pending.delete(m.requestId!);
        clearTimeout(p.timer);
        return p.resolve({ id: m.id, room: m.room, sequence: m.sequence, duplicate: m.duplicate });
      }
      case 'error': {
        const err = new ServerError(m.code, m.message, m.room, m.requestId);
        if (!ready && m.room === undefined && m.requestId === undefined) initRefusal = err;
        if (m.code === '4401' && !ready) authRefused = true;
        const p = m.requestId !== undefined ? pending.get(m.requestId) : undefined;
        if (p) {
          pending.delete(m.requestId!);
          clearTimeout(p.timer);
          p.reject(err);
        } else subs.onErrorMessage(m);
        return report(err);
      }
      case 'ephemeral': {
        const d = m.data as EphemeralEvent;
        for (const key of [d.room, `${d.room.slice(0, d.room.indexOf(':'))}:*`]) {
          for (const h of eph.get(key) ?? []) {
            if (h.types && !h.types.includes(d.type)) continue;
            try {
              h.handler(d);
            } catch (e) {
              report(e as Error);
            }
          }
        }
        return;
      }
      case 'presence_state':
        return presence?.onState(m.room, m.members);
      case 'presence':
        return presence?.onChangeMessage(m.room, m.action, m.userId, m.member);
      case 'token_expiring':
        if (typeof o.token === 'function') {
          getToken().then(
            (token) => token && send({ type: 'refresh_token', token }),
            (e) => report(e as Error),
          );
        }
        return;
      default:
    }
  };

  const stop = (reason: Error | undefined) => {
    if (stopped) return;
    subs.flushAcks();
    stopped = true;
    const l = link;
    drop();
    l?.close(1000, 'client closed');
    clearTimeout(retryTimer);
    if (timer) clearTimeout(timer);
    const closed = new ClientClosedError();
    for (const p of pending.values()) clearTimeout(p.timer), p.reject(reason ?? closed);
    pending.clear();
    subs.removeAll(reason ?? closed);
    // After the presence calls made so far (still waiting for the load, maybe): they fail too.
    if (presenceLoad) void withPresence((p) => p.close(reason ?? closed)).catch(() => {});
    setState({ status: 'closed', error: reason });
    if (reason) report(reason);
  };

  const client: RealtimeClient = {
    get subscriberId() {
      return subscriberId;
    },
    get state() {
      return state;
    },
    subscribe: (target, handler, opts = {}) => {
      if (stopped) throw new ClientClosedError();
      return subs.subscribe(target, handler, opts);
    },
    subscribeEphemeral(target, handler, opts = {}) {
      let set = eph.get(target);
      if (!set) {
        eph.set(target, (set = new Set()));
        if (online()) send({ type: 'subscribe_ephemeral', rooms: [target] });
      }
      const entry = { handler, types: opts.types };
      const s = set;
      s.add(entry);
      return {
        unsubscribe() {
          if (!s.delete(entry) || s.size) return;
          eph.delete(target);
          if (online()) send({ type: 'unsubscribe_ephemeral', rooms: [target] });
        },
      };
    },
    publish(room, type, payload, opts = {}) {
      if (stopped) return Promise.reject(new ClientClosedError());
      if (pending.size >= maxQueued) return Promise.reject(new QueueFullError(maxQueued));
      const requestId = `p${++seq}`;
      const event: Record<string, unknown> = { room, type, payload, id: opts.id ?? randomId() };
      if (opts.ttlMs !== undefined) event.ttlMs = opts.ttlMs;
      if (opts.metadata) event.metadata = opts.metadata;
      if (opts.encrypted) event.encrypted = true;
      const msg: ClientMessage = { type: 'publish', requestId, event };
      if (opts.excludeSelf) msg.excludeSelf = true;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(requestId);
          reject(new TimeoutError('publish'));
        }, requestTimeoutMs);
        const p: Pending = { msg, resolve, reject, timer, sent: false };
        pending.set(requestId, p);
        if (online()) send(msg), (p.sent = true);
      });
    },
    publishEphemeral(room, type, payload, opts = {}) {
      if (stopped) return Promise.reject(new ClientClosedError());
      const msg: ClientMessage = { type: 'publish_ephemeral', room, eventType: type, payload };
      if (opts.echo) msg.echo = true;
      if (online()) return send(msg), Promise.resolve();
      if (ephQueue.length >= maxQueued) return Promise.reject(new QueueFullError(maxQueued));
      return new Promise((done) => ephQueue.push({ msg, done }));
    },
    presence(room): Presence {
      const call = <T>(f: (h: Presence) => Promise<T>) => withPresence((p) => f(p.handle(room)));
      return {
        enter: (metadata) => call((h) => h.enter(metadata)),
        leave: () => call((h) => h.leave()),
        members: () => call((h) => h.members()),
        onChange(cb) {
          // Synchronous: listens once presence is loaded; `off` works before that too.
          let live = true;
          let off: (() => void) | undefined;
          const listener: PresenceListener = (list, change) => {
            try {
              if (live) cb(list, change);
            } catch (e) {
              report(e as Error); // a throwing listener must not break the connection's message loop
            }
          };
          withPresence((p) => (off = p.handle(room).onChange(listener))).catch(report);
          return () => {
            if (live) (live = false), withPresence(() => off?.()).catch(() => {});
          };
        },
      };
    },
    on(event: 'state' | 'error', cb: (x: never) => void) {
      const set = listeners[event] as Set<typeof cb>;
      set.add(cb);
      return () => void set.delete(cb);
    },
    positions() {
      const out: Record<string, RoomPosition> = {};
      for (const [room, t] of subs.tracks) if (!t.viaWildcard) out[room] = t.position();
      return out;
    },
    connected() {
      if (state.status === 'connected') return Promise.resolve();
      if (stopped) return Promise.reject(new ClientClosedError());
      return new Promise((resolve, reject) => {
        const off = client.on('state', (s) => {
          if (s.status === 'connected') off(), resolve();
          else if (s.status === 'closed') off(), reject(s.error ?? new ClientClosedError());
        });
      });
    },
    disconnect() {
      if (stopped || paused) return;
      subs.flushAcks();
      paused = true;
      clearTimeout(retryTimer);
      const l = link;
      drop();
      l?.close(1000, 'offline');
      setState({ status: 'offline' });
    },
    connect() {
      if (stopped || !paused) return;
      paused = false;
      attempt = 0;
      void connect();
    },
    async close() {
      stop(undefined);
    },
  };
  void connect();
  return client;
}
