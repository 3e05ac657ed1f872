/**
 * The seam between the client's logic and a transport: a `Link` is one
 * connection that accepts protocol messages and reports protocol messages.
 * The WebSocket transport moves them as frames; the SSE transport translates
 * them to an event stream plus HTTP calls. The client never knows which.
 */
import type { ServerError } from './errors.js';
import type { ClientMessage, ServerMessage } from './protocol.js';

/** One connection attempt. */
export interface Link {
  readonly kind: 'websocket' | 'sse';
  /** Sends a message (dropped silently when the link is not open: the client resends what matters). */
  send(msg: ClientMessage): void;
  /** Closes the link; no more callbacks follow. */
  close(code?: number, reason?: string): void;
}

/** What a link reports. Callbacks stop after `close` (either side). */
export interface LinkEvents {
  /** Open: send `init`. */
  open(): void;
  message(msg: ServerMessage): void;
  /** A frame that could not be read (the link stays up). */
  error(err: Error): void;
  /**
   * The link ended. `opened`: it reached `open`. `subprotocolRefused`: the compact offer broke the
   * handshake. `refusal`: why the server refused the connection, when it said (SSE: the HTTP error).
   */
  close(info: { code: number; reason: string; opened: boolean; subprotocolRefused?: boolean; refusal?: ServerError }): void;
}
