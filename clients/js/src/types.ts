/**
 * Public data types: what handlers receive and what calls return. Field
 * names follow the wire protocol (camelCase), so an event logged by the
 * browser looks like the event the gateway documents.
 */

/** A stored event as delivered to a subscription (the protocol's envelope). */
export interface RealtimeEvent<P = unknown> {
  /** Event id (the publisher's idempotency key). */
  id: string;
  /** Event type, e.g. `message.created`. */
  type: string;
  /** Room, e.g. `chat:123`. */
  room: string;
  /** Per-room sequence: 1, 2, 3, … without gaps within one epoch. */
  sequence: number;
  /** RFC 3339 UTC time the event was stored. */
  emittedAt: string;
  /** RFC 3339 UTC time the event leaves history. */
  expiresAt: string;
  /** The publisher's JSON payload. */
  payload: P;
  /** Optional publisher metadata. */
  metadata?: Record<string, unknown>;
  /** True when the payload is ciphertext the server never read. */
  encrypted?: boolean;
}

/** Why history before a point is gone. */
export type DiscontinuityReason = 'stream_reset' | 'position_expired';

/**
 * Delivered, in order, before the first event of a new history: events
 * between `lastDelivered` and `earliestSequence` are gone and will never be
 * delivered. Reload the room's state (a snapshot, an API call) when you see it.
 */
export interface Discontinuity {
  room: string;
  recovered: false;
  reason: DiscontinuityReason;
  /** The new epoch, when known (wildcard rooms: unknown). */
  epoch: string | undefined;
  /** Delivery continues at this sequence. */
  earliestSequence: number;
  /** The last sequence delivered before the discontinuity (0: none). */
  lastDelivered: number;
}

/** Where the application stands in a room: resume from here after a reload. */
export interface RoomPosition {
  /** Last delivered (or acked, for cursor stores) sequence. */
  sequence: number;
  /** The epoch `sequence` belongs to. */
  epoch?: string | undefined;
}

/** What `publish` resolves with. */
export interface PublishResult {
  id: string;
  room: string;
  sequence: number;
  /** True when an event with this id already existed (an idempotent re-send). */
  duplicate: boolean;
}

/** An event to publish. */
export interface OutgoingEvent<P = unknown> {
  room: string;
  type: string;
  payload: P;
  /** Idempotency key; generated when absent (so re-sends after a reconnect are stored once). */
  id?: string;
  ttlMs?: number;
  metadata?: Record<string, unknown>;
  encrypted?: boolean;
  /** Do not deliver the event back to this connection. */
  excludeSelf?: boolean;
}

/** A fan-out-only event: no sequence, no history, no ack. */
export interface EphemeralEvent<P = unknown> {
  type: string;
  room: string;
  payload: P;
  emittedAt: string;
  metadata?: Record<string, unknown>;
}

/** A member of a room's presence. */
export interface PresenceMember {
  userId: string;
  metadata?: Record<string, unknown>;
  lastSeenAt?: string;
}

/** A presence change, or the full member list (first, and after every reconnect). */
export type PresenceEvent =
  | { kind: 'members'; room: string; members: PresenceMember[] }
  | { kind: 'joined'; room: string; userId: string; member: PresenceMember | undefined }
  | { kind: 'left'; room: string; userId: string };

/** Connection state, as reported by the `state` event. */
export type ConnectionState =
  | { status: 'connecting'; transport: 'websocket' | 'sse' }
  | { status: 'connected'; transport: 'websocket' | 'sse'; connectionId: string | undefined }
  | { status: 'reconnecting'; attempt: number; delayMs: number }
  /** After `client.disconnect()`, until `client.connect()`. */
  | { status: 'offline' }
  | { status: 'closed'; error: Error | undefined };
