/**
 * Wire messages (docs/protocol.md). Only the fields this client reads or
 * writes are typed; unknown fields are ignored, as the protocol requires.
 */
import type { PresenceMember, RealtimeEvent } from './types.js';

/** Messages the client sends. */
export type ClientMessage =
  | { type: 'init'; subscriberId: string; token?: string }
  | {
      type: 'subscribe';
      rooms: string[];
      positions?: Record<string, number>;
      epochs?: Record<string, string>;
      /** A room token opening the one room of `rooms` beyond the connection's token. */
      roomToken?: string;
    }
  | { type: 'unsubscribe'; rooms: string[] }
  | { type: 'publish'; requestId: string; excludeSelf?: boolean; event: Record<string, unknown> }
  | { type: 'ack'; room: string; sequence: number }
  | ReplayRequest
  | { type: 'publish_ephemeral'; requestId?: string; room: string; eventType: string; payload: unknown; echo?: boolean }
  | { type: 'subscribe_ephemeral'; rooms: string[] }
  | { type: 'unsubscribe_ephemeral'; rooms: string[] }
  | { type: 'presence_enter'; room: string; metadata?: Record<string, unknown> }
  | { type: 'presence_leave' | 'presence_subscribe' | 'presence_unsubscribe'; room: string }
  | { type: 'refresh_token'; token: string }
  | { type: 'ping'; id: string };

/** A `replay_request`: one page of a room's history. */
export interface ReplayRequest {
  type: 'replay_request';
  room: string;
  fromSequence: number;
  toSequence?: number;
  limit: number;
  requestId: string;
}

/** The answer to `subscribe`, one per room (epoch, lastSequence, resume outcome). */
export interface SubscribedMessage {
  type: 'subscribed';
  room: string;
  epoch?: string;
  lastSequence?: number;
  recovered?: boolean;
  reason?: string;
  earliestSequence?: number;
  startAfter?: number;
  requestId?: string;
}

/** One page of history answering a `replay_request`. */
export interface ReplayMessage {
  type: 'replay';
  room: string;
  events: RealtimeEvent[];
  hasMore: boolean;
  scannedTo: number;
  requestId?: string;
}

/** A room's history was reset while subscribed. */
export interface DiscontinuityMessage {
  type: 'discontinuity';
  room: string;
  reason: string;
  epoch: string;
  earliestSequence: number;
}

/** A refusal or failure, with the protocol's string code. */
export interface ErrorMessage {
  type: 'error';
  code: string;
  message: string;
  room?: string;
  requestId?: string;
}

/** Messages the server sends (text frames, decoded compact frames, or SSE records). */
export type ServerMessage =
  | { type: 'ready'; subscriberId?: string; connectionId?: string; heartbeatIntervalMs?: number; tokenExpiresAt?: number }
  | SubscribedMessage
  | { type: 'event'; data: RealtimeEvent }
  | ReplayMessage
  | DiscontinuityMessage
  | ErrorMessage
  | { type: 'published'; requestId?: string; id: string; room: string; sequence: number; duplicate: boolean }
  | { type: 'ack' | 'unsubscribed' | 'subscribed_ephemeral'; room: string; sequence?: number }
  | { type: 'ephemeral'; data: { type: string; room: string; payload: unknown; emittedAt: string; metadata?: Record<string, unknown> } }
  /** `members` is absent in the SSE adapter's answer to a leave (the HTTP route returns 204). */
  | { type: 'presence_state'; room: string; members?: PresenceMember[] }
  | { type: 'presence'; room: string; action: string; userId: string; member?: PresenceMember }
  | { type: 'token_expiring' | 'token_refreshed'; expiresAt?: number }
  | { type: 'pong'; id?: unknown };
