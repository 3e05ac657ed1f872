/**
 * `@zero-pub-sub/client`: the browser / Node / Deno / Bun client of a
 * zero-pub-sub gateway. Every event of a subscribed room reaches the handler
 * exactly once, in sequence order, across reconnects; lost history is
 * reported as a discontinuity, never skipped silently.
 */
export { createRealtimeClient } from './client.js';
export { endpoints } from './api.js';
export type { ClientOptions, PublishOptions, RealtimeClient } from './api.js';
export type { EventHandler, SubscribeOptions, Subscription } from './subscriptions.js';
export type { Presence, PresenceListener } from './presence.js';
export { memoryCursorStore, localStorageCursorStore } from './cursor-store.js';
export type { CursorStore, StorageLike } from './cursor-store.js';
export type { ReconnectOptions } from './backoff.js';
export type { WebSocketConstructor, WebSocketLike } from './transport-ws.js';
export type { EventSourceConstructor, EventSourceLike, FetchLike } from './transport-sse.js';
export {
  ZpsError,
  ServerError,
  ConnectionError,
  TimeoutError,
  QueueFullError,
  ClientClosedError,
  UnauthorizedError,
  ProtocolError,
  TokenError,
  AlreadySubscribedError,
  ErrorCodes,
} from './errors.js';
export type { ErrorCode } from './errors.js';
export type * from './types.js';
