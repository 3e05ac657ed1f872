/**
 * The WebSocket transport: JSON text frames both ways, plus compact binary
 * event frames when `zps.compact.v1` was negotiated. Works with the browser's
 * (and Node ≥ 22's, Deno's, Bun's) global `WebSocket` or any constructor with
 * the same shape (the `ws` package on Node 20).
 */
import { ProtocolError } from './errors.js';
import type { Link, LinkEvents } from './link.js';
import type { ServerMessage } from './protocol.js';
import type { RealtimeEvent } from './types.js';

/** The subprotocol of compact event frames (docs/protocol.md). */
const COMPACT_SUBPROTOCOL = 'zps.compact.v1';

/** The part of the WHATWG WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // Handler parameters are `never` so that the DOM's and `ws`'s richer event types are accepted.
  onopen: ((ev: never) => void) | null;
  onmessage: ((ev: never) => void) | null;
  onerror: ((ev: never) => void) | null;
  onclose: ((ev: never) => void) | null;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `ws`'s default export). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/**
 * Opens a WebSocket link. With `decodeCompact` (loaded only when asked for) it
 * offers the compact subprotocol, JSON staying acceptable.
 */
export function openWebSocket(
  url: string,
  Ctor: WebSocketConstructor,
  decodeCompact: ((bytes: Uint8Array) => RealtimeEvent) | undefined,
  on: LinkEvents,
): Link {
  const compact = decodeCompact !== undefined;
  let opened = false;
  let done = false;
  let refused = false;
  let binary = false;
  const ws = compact ? new Ctor(url, [COMPACT_SUBPROTOCOL, 'zps.json.v1']) : new Ctor(url);
  ws.binaryType = 'arraybuffer';
  // Handlers are replaced by no-ops, never removed: `ws` throws on an 'error' nobody listens to.
  const detach = () => {
    done = true;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
  };
  const end = (code: number, reason: string) => {
    if (done) return;
    detach();
    on.close({ code, reason, opened, subprotocolRefused: refused });
  };
  ws.onopen = () => {
    opened = true;
    // A gateway that did not choose the compact protocol speaks JSON only.
    binary = ws.protocol === COMPACT_SUBPROTOCOL;
    on.open();
  };
  ws.onmessage = ({ data }: { data: unknown }) => {
    let msg: ServerMessage;
    try {
      if (typeof data === 'string') msg = JSON.parse(data) as ServerMessage;
      else if (binary && (data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
        const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        msg = { type: 'event', data: decodeCompact!(bytes) };
      } else throw new ProtocolError('unexpected binary frame');
    } catch (e) {
      on.error(e instanceof ProtocolError ? e : new ProtocolError(`unreadable frame: ${e instanceof Error ? e.message : String(e)}`));
      return;
    }
    if (!done) on.message(msg);
  };
  ws.onerror = (ev: { message?: unknown; error?: unknown }) => {
    // `ws` (Node) fails the handshake when a subprotocol was offered and none chosen.
    if (compact && !opened && /subprotocol/i.test(String(ev.message ?? ev.error ?? ''))) refused = true;
  };
  ws.onclose = (ev: { code: number; reason: string }) => end(ev.code || 1006, ev.reason || '');
  return {
    kind: 'websocket',
    send(msg) {
      if (ws.readyState === 1) ws.send(JSON.stringify(msg));
    },
    close(code = 1000, reason = '') {
      detach();
      try {
        ws.close(code, reason);
      } catch {
        // closing a socket that never opened may throw in some implementations
      }
    },
  };
}
