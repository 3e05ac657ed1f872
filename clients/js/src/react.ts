/**
 * Optional React hooks (`@zero-pub-sub/client/react`). React is a peer
 * dependency: this module imports it, the core never does.
 */
import { useEffect, useState } from 'react';
import type { RealtimeClient } from './api.js';
import type { SubscribeOptions } from './subscriptions.js';
import type { ConnectionState, Discontinuity, PresenceMember, RealtimeEvent } from './types.js';

/** What `useRoom` returns. */
export interface RoomState<P = unknown> {
  /** Events received since mount (the newest `max`), in sequence order. */
  events: RealtimeEvent<P>[];
  /** The newest event. */
  last: RealtimeEvent<P> | undefined;
  /** The connection status. */
  status: ConnectionState['status'];
  /** The latest discontinuity (history lost), if any. */
  discontinuity: Discontinuity | undefined;
}

/** Tracks the connection status of `client`. */
export function useConnectionState(client: RealtimeClient): ConnectionState {
  const [state, setState] = useState<ConnectionState>(client.state);
  useEffect(() => client.on('state', setState), [client]);
  return state;
}

/** Subscribes to `room` while mounted; returns its events (at most `max`, default 100) and status. */
export function useRoom<P = unknown>(
  client: RealtimeClient,
  room: string,
  options: Omit<SubscribeOptions, 'onDiscontinuity'> & { max?: number } = {},
): RoomState<P> {
  const [events, setEvents] = useState<RealtimeEvent<P>[]>([]);
  const [discontinuity, setDiscontinuity] = useState<Discontinuity | undefined>();
  const status = useConnectionState(client).status;
  const { max = 100, fromSequence, types, ackMode } = options;
  const typesKey = types?.join(',');
  useEffect(() => {
    setEvents([]);
    const opts: SubscribeOptions = { onDiscontinuity: setDiscontinuity };
    if (fromSequence !== undefined) opts.fromSequence = fromSequence;
    if (types) opts.types = types;
    if (ackMode) opts.ackMode = ackMode;
    const sub = client.subscribe(
      room,
      (e) => setEvents((prev) => [...prev, e as RealtimeEvent<P>].slice(-max)),
      opts,
    );
    return () => sub.unsubscribe();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, room, max, fromSequence, typesKey, ackMode]);
  return { events, last: events[events.length - 1], status, discontinuity };
}

/** Watches `room`'s members while mounted; with `metadata`, also enters the room. */
export function usePresence(client: RealtimeClient, room: string, metadata?: Record<string, unknown>): PresenceMember[] {
  const [members, setMembers] = useState<PresenceMember[]>([]);
  const metaKey = metadata === undefined ? undefined : JSON.stringify(metadata);
  useEffect(() => {
    const p = client.presence(room);
    const off = p.onChange((list) => setMembers(list));
    if (metaKey !== undefined) p.enter(JSON.parse(metaKey) as Record<string, unknown>).catch(() => {});
    return () => {
      off();
      if (metaKey !== undefined) void p.leave();
    };
  }, [client, room, metaKey]);
  return members;
}
