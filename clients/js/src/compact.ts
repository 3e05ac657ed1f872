/**
 * Compact event frames (`zps.compact.v1`): an event as a 10-element
 * MessagePack array in a binary WebSocket frame (docs/protocol.md, "Compact
 * event frames"). The payload and metadata travel as their JSON text, so the
 * result is the same envelope a JSON `event` message carries. A malformed
 * frame throws a plain `Error` (reported by the transport as `ProtocolError`).
 */
import { decodeMsgpack } from './msgpack.js';
import type { RealtimeEvent } from './types.js';

const utf8 = new TextDecoder();

/** Decodes a compact event frame into the JSON envelope form. */
export function decodeCompactEvent(bytes: Uint8Array): RealtimeEvent {
  const v = decodeMsgpack(bytes);
  if (!Array.isArray(v) || v.length < 10 || v[0] !== 1) throw new Error('compact: not an event frame');
  const [, room, sequence, id, type, emitted, expires, payload, metadata, encrypted] = v;
  if (
    typeof room !== 'string' || typeof sequence !== 'number' || typeof id !== 'string' || typeof type !== 'string' ||
    typeof emitted !== 'number' || typeof expires !== 'number' || !(payload instanceof Uint8Array) ||
    !(metadata === null || metadata instanceof Uint8Array) || typeof encrypted !== 'boolean'
  ) {
    throw new Error('compact: wrong field types');
  }
  const event: RealtimeEvent = {
    id,
    type,
    room,
    sequence,
    emittedAt: new Date(emitted).toISOString(),
    expiresAt: new Date(expires).toISOString(),
    payload: JSON.parse(utf8.decode(payload)) as unknown,
  };
  if (metadata) event.metadata = JSON.parse(utf8.decode(metadata)) as Record<string, unknown>;
  if (encrypted) event.encrypted = true;
  return event;
}
