/**
 * Typed errors. Server refusals carry the protocol's string error code
 * (`'4403'`, `'4408'`, …) so callers can branch on `err.code` without parsing
 * messages; client-side failures use short lowercase codes (`'timeout'`, …).
 */

/** The protocol's error codes (docs/protocol.md, "Error codes"). */
export const ErrorCodes = {
  Malformed: '4400',
  Unauthorized: '4401',
  Forbidden: '4403',
  NotSubscribed: '4404',
  AccessDenied: '4408',
  AlreadyInitialised: '4409',
  PayloadTooLarge: '4413',
  InvalidRoom: '4422',
  RateLimited: '4429',
  TooManySubscriptions: '4430',
  Internal: '4500',
  NotSupported: '4501',
  Unavailable: '4503',
} as const;

/** A protocol error code, or another string a newer server may send. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | (string & {});

/** Base class of every error this package raises: test with `instanceof ZpsError`. */
export class ZpsError extends Error {
  /** A protocol code (`'4403'`) for server refusals, a lowercase client code otherwise. */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The server refused something (an `error` message or an HTTP error in SSE mode). */
export class ServerError extends ZpsError {
  declare readonly code: ErrorCode;
  /** The room the refusal is about, when the server said. */
  readonly room: string | undefined;
  /** The `requestId` of the refused request, when it had one. */
  readonly requestId: string | undefined;
  constructor(code: ErrorCode, message: string, room?: string, requestId?: string) {
    super(code, message);
    this.room = room;
    this.requestId = requestId;
  }
}

/** The connection ended (close frame, network error, or an SSE stream failure). */
export class ConnectionError extends ZpsError {
  /** The WebSocket close code (1006 when the connection simply dropped). */
  readonly closeCode: number;
  readonly reason: string;
  constructor(closeCode: number, reason: string) {
    super('connection_closed', `connection closed (${closeCode}${reason ? `: ${reason}` : ''})`);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/** No answer within `requestTimeoutMs`; a publish may be retried with the same id. */
export class TimeoutError extends ZpsError {
  constructor(what: string) {
    super('timeout', `${what} timed out`);
  }
}

/** Too many requests wait for a connection (`maxQueuedMessages`): nothing was dropped silently. */
export class QueueFullError extends ZpsError {
  constructor(limit: number) {
    super('queue_full', `request queue full (${limit})`);
  }
}

/** The client was closed (by `close()` or a fatal error) before the request finished. */
export class ClientClosedError extends ZpsError {
  constructor() {
    super('closed', 'client closed');
  }
}

/** The token was refused and cannot be fixed by reconnecting: the client stopped. */
export class UnauthorizedError extends ZpsError {
  /**
   * The server's refusal, when it sent one: code `'4401'` (token missing, invalid or
   * expired) or `'4403'` (the subscriber id is not the token's `sub` or `sub#device`).
   */
  readonly refusal: ServerError | undefined;
  constructor(message: string, refusal?: ServerError) {
    super('unauthorized', message);
    this.refusal = refusal;
  }
}

/** A frame the client could not read (bad JSON, bad compact frame). */
export class ProtocolError extends ZpsError {
  constructor(message: string) {
    super('protocol', message);
  }
}

/** The token provider failed or did not answer in time. */
export class TokenError extends ZpsError {
  constructor(message: string) {
    super('token', message);
  }
}

/** A room or pattern is already covered by another subscription of this client. */
export class AlreadySubscribedError extends ZpsError {
  constructor(target: string) {
    super('already_subscribed', `already subscribed: ${target}`);
  }
}
