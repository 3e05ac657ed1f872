/**
 * The public shape of the client: its options, the publish options and the
 * `RealtimeClient` interface, plus the URL rule shared by both transports.
 */
import type { ReconnectOptions } from './backoff.js';
import type { CursorStore } from './cursor-store.js';
import type { Presence } from './presence.js';
import type { EventHandler, SubscribeOptions, Subscription } from './subscriptions.js';
import type { EventSourceConstructor, FetchLike } from './transport-sse.js';
import type { WebSocketConstructor } from './transport-ws.js';
import type { ConnectionState, EphemeralEvent, PublishResult, RoomPosition } from './types.js';

/** Options of `createRealtimeClient`. */
export interface ClientOptions {
  /** Gateway URL: `wss://host/ws`, `https://host`, or relative (`/ws`) in a browser. */
  url: string;
  /** A JWT, or a function returning one; the function is called on every (re)connect and on `token_expiring`. */
  token?: string | (() => string | Promise<string>);
  /**
   * Durable consumer id (server-side ack cursors are kept per id). A gateway that verifies
   * tokens accepts only the token's `sub` or `sub#device`. Default: `<sub>#zps-js-<random>`
   * with a token whose `sub` is readable, else `zps-js-<random>`.
   */
  subscriberId?: string;
  /** WebSocket constructor (default: `globalThis.WebSocket`; pass `ws`'s export on Node 20). */
  WebSocket?: WebSocketConstructor;
  /** EventSource constructor for SSE (default: global, else a fetch-based reader). */
  EventSource?: EventSourceConstructor;
  /** `fetch` for the HTTP API in SSE mode (default: global). */
  fetch?: FetchLike;
  /** Where room positions are saved on ack (default: `memoryCursorStore()`). */
  cursorStore?: CursorStore;
  /** `auto` (default): WebSocket, SSE when no WebSocket exists or it never opens. */
  transport?: 'auto' | 'websocket' | 'sse';
  /** Reconnect backoff (full jitter): `{ minMs: 250, maxMs: 30000 }`. */
  reconnect?: ReconnectOptions;
  /** App-level ping interval on WebSocket (default 25 000; 0 disables); silence for twice this reconnects. */
  heartbeatMs?: number;
  /** Longest wait for an answer (publish, presence, token): default 10 000. */
  requestTimeoutMs?: number;
  /** Publishes kept while offline or unanswered (default 1024). */
  maxQueuedMessages?: number;
  /** `json` (default) or `compact` (MessagePack event frames, `zps.compact.v1`). */
  encoding?: 'json' | 'compact';
  /** Reorder window before a missing sequence is requested (default 100 ms). */
  replayThrottleMs?: number;
  /** Events per replay page (default 500). */
  replayPageSize?: number;
  /** Out-of-order events held per room (default 1000). */
  maxBufferedEventsPerRoom?: number;
  /** Longest delay of an ack (default 100 ms). */
  ackIntervalMs?: number;
}

/** Options of `client.publish`. */
export interface PublishOptions {
  /** Idempotency key (generated when absent, so a re-send after a reconnect is stored once). */
  id?: string;
  ttlMs?: number;
  metadata?: Record<string, unknown>;
  encrypted?: boolean;
  /** Do not deliver the event back to this connection. */
  excludeSelf?: boolean;
}

/** The client returned by `createRealtimeClient`. */
export interface RealtimeClient {
  /** The subscriber id sent in the latest `init` (with a token provider: derived from its token's `sub`, see `subscriberId`). */
  readonly subscriberId: string;
  /** The current connection state. */
  readonly state: ConnectionState;
  /** Delivers a room's (or `scope:*`'s) events to `handler`, each once, in sequence order. */
  subscribe(target: string, handler: EventHandler, options?: SubscribeOptions): Subscription;
  /** Receives ephemeral (not stored) events of a room or `scope:*` (WebSocket, or SSE with an `ephemeral=1` stream). */
  subscribeEphemeral(target: string, handler: (e: EphemeralEvent) => void, options?: { types?: string[] }): { unsubscribe(): void };
  /** Stores and delivers an event; resolves with its sequence (needs `--allow-client-publish`). */
  publish<P>(room: string, type: string, payload: P, options?: PublishOptions): Promise<PublishResult>;
  /** Fans out a not-stored event (typing, cursors); resolves when sent. */
  publishEphemeral<P>(room: string, type: string, payload: P, options?: { echo?: boolean }): Promise<void>;
  /** Presence of a room: enter, leave, members, onChange. */
  presence(room: string): Presence;
  /** Listens to state changes or errors; returns a function that stops listening. */
  on(event: 'state', cb: (s: ConnectionState) => void): () => void;
  on(event: 'error', cb: (e: Error) => void): () => void;
  /** Each exact room's last delivered sequence and epoch. */
  positions(): Record<string, RoomPosition>;
  /** Resolves when connected (at once if connected); rejects when the client closes. */
  connected(): Promise<void>;
  /** Goes offline (closes the connection, keeps subscriptions and positions). */
  disconnect(): void;
  /** Comes back online after `disconnect()`; subscriptions catch up without gaps. */
  connect(): void;
  /** Sends pending acks, closes the connection for good. */
  close(): Promise<void>;
}

/** Gateway WebSocket and HTTP base URLs derived from the `url` option. */
export function endpoints(url: string): { ws: string; http: string } {
  const loc = (globalThis as { location?: { href: string } }).location;
  const u = new URL(url, loc?.href);
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  const path = u.pathname.replace(/\/+$/, '').replace(/\/(ws|events)$/, '');
  return { ws: `${secure ? 'wss' : 'ws'}://${u.host}${path}/ws${u.search}`, http: `${secure ? 'https' : 'http'}://${u.host}${path}` };
}
