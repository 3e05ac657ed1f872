/**
 * Optional React hooks (`@zero-pub-sub/client/react`). React is a peer
 * dependency: this module imports it, the core never does.
 */
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';
import type { RealtimeClient } from './api.js';
import type { SubscribeOptions, Subscription } from './subscriptions.js';
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

/** Options of `useRoom`. */
export type UseRoomOptions = Omit<SubscribeOptions, 'onDiscontinuity' | 'onError'> & {
  /** Events kept (the newest), default 100. Changing it does not resubscribe. */
  max?: number;
};

/** Tracks the connection status of `client`. */
export function useConnectionState(client: RealtimeClient): ConnectionState {
  // An external store: no change is missed between render and subscription, and a new
  // `client` is read at once.
  const subscribe = useCallback((onChange: () => void) => client.on('state', onChange), [client]);
  const snapshot = useCallback(() => client.state, [client]);
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

interface RoomListener {
  event(e: RealtimeEvent): void;
  discontinuity(d: Discontinuity): void;
}

interface SharedRoom {
  sub: Subscription;
  listeners: Set<RoomListener>;
  release: ReturnType<typeof setTimeout> | undefined;
}

/**
 * One client subscription per (client, room), shared by every `useRoom` of it: a client
 * subscribes to a room once, and two components may show the same room. The last
 * listener's release unsubscribes a tick later, so StrictMode's unmount/remount (and a
 * quick remount) keeps the subscription instead of churning it.
 */
const shared = new WeakMap<RealtimeClient, Map<string, SharedRoom>>();

function acquireRoom(client: RealtimeClient, room: string, options: SubscribeOptions, listener: RoomListener): () => void {
  let rooms = shared.get(client);
  if (!rooms) shared.set(client, (rooms = new Map()));
  let entry = rooms.get(room);
  if (entry && (entry.sub as unknown as { closed?: boolean }).closed) entry = undefined; // refused, or the client closed
  if (!entry) {
    const listeners = new Set<RoomListener>();
    const sub = client.subscribe(room, (e) => { for (const l of [...listeners]) l.event(e); }, {
      ...options,
      onDiscontinuity: (d) => { for (const l of [...listeners]) l.discontinuity(d); },
    });
    entry = { sub, listeners, release: undefined };
    rooms.set(room, entry);
  }
  const e = entry;
  const byRoom = rooms;
  clearTimeout(e.release);
  e.release = undefined;
  e.listeners.add(listener);
  return () => {
    if (!e.listeners.delete(listener) || e.listeners.size) return;
    clearTimeout(e.release);
    e.release = setTimeout(() => {
      if (e.listeners.size) return;
      e.sub.unsubscribe();
      if (byRoom.get(room) === e) byRoom.delete(room);
    }, 0);
  };
}

/**
 * Subscribes to `room` while mounted; returns its events (at most `max`, default 100) and status.
 * Components using the same client and room share one subscription: the options of the first
 * one mounted (`fromSequence`, `epoch`, `ackMode`) apply, `types` filters per component, and a
 * component mounted later sees the events delivered from then on.
 */
export function useRoom<P = unknown>(client: RealtimeClient, room: string, options: UseRoomOptions = {}): RoomState<P> {
  const [events, setEvents] = useState<RealtimeEvent<P>[]>([]);
  const [discontinuity, setDiscontinuity] = useState<Discontinuity | undefined>();
  const status = useConnectionState(client).status;
  const { max = 100, fromSequence, epoch, types, ackMode } = options;
  const maxRef = useRef(max);
  useEffect(() => {
    maxRef.current = max;
  }, [max]);
  const typesKey = types === undefined ? undefined : JSON.stringify(types);
  useEffect(() => {
    setEvents([]);
    setDiscontinuity(undefined);
    const opts: SubscribeOptions = {};
    if (fromSequence !== undefined) opts.fromSequence = fromSequence;
    if (epoch !== undefined) opts.epoch = epoch;
    if (ackMode) opts.ackMode = ackMode;
    const wanted = typesKey === undefined ? undefined : new Set(JSON.parse(typesKey) as string[]);
    return acquireRoom(client, room, opts, {
      event: (e) => {
        if (wanted && !wanted.has(e.type)) return;
        setEvents((prev) => {
          const next = [...prev, e as RealtimeEvent<P>];
          return next.length > maxRef.current ? next.slice(-maxRef.current) : next;
        });
      },
      discontinuity: setDiscontinuity,
    });
  }, [client, room, fromSequence, epoch, typesKey, ackMode]);
  const shown = useMemo(() => (events.length > max ? events.slice(-max) : events), [events, max]);
  return { events: shown, last: shown[shown.length - 1], status, discontinuity };
}

/** Watches `room`'s members while mounted; with `metadata`, also enters the room. */
export function usePresence(client: RealtimeClient, room: string, metadata?: Record<string, unknown>): PresenceMember[] {
  const [members, setMembers] = useState<PresenceMember[]>([]);
  const metaKey = metadata === undefined ? undefined : JSON.stringify(metadata);
  useEffect(() => {
    setMembers([]); // not the previous room's members
    const p = client.presence(room);
    const off = p.onChange((list) => setMembers(list));
    if (metaKey !== undefined) p.enter(JSON.parse(metaKey) as Record<string, unknown>).catch(() => {});
    return () => {
      // Leave while still watching, then stop watching: the gateway forgets both.
      if (metaKey !== undefined) void p.leave();
      off();
    };
  }, [client, room, metaKey]);
  return members;
}
