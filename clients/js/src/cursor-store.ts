/**
 * Pluggable persistence of room positions, so a reloaded page (or a restarted
 * process) resumes where it left off instead of going live and silently
 * missing what happened meanwhile. The client saves a room's position when
 * it acks (after the handler, in auto mode), loads it when you subscribe
 * without an explicit start, and resumes with that sequence *and epoch*: if
 * the history was reset in between you get a discontinuity, never a mix.
 */
import type { RoomPosition } from './types.js';

/** Storage for room positions. Methods may be synchronous or return promises. */
export interface CursorStore {
  /** The saved position of `room`, if any. */
  load(room: string): RoomPosition | undefined | Promise<RoomPosition | undefined>;
  /** Remembers `room`'s position (called at most once per room per ack interval). */
  save(room: string, position: RoomPosition): void | Promise<void>;
  /** Forgets `room` (optional). */
  delete?(room: string): void | Promise<void>;
}

/** Positions kept in memory: the default; survives reconnects, not reloads. */
export function memoryCursorStore(): CursorStore {
  const map = new Map<string, RoomPosition>();
  return {
    load: (room) => map.get(room),
    save: (room, position) => void map.set(room, { ...position }),
    delete: (room) => void map.delete(room),
  };
}

/** The part of the Web Storage API this store uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Positions in `localStorage` (or any Web Storage), one key per room: survives reloads. */
export function localStorageCursorStore(prefixOrOptions: string | { prefix?: string; storage?: StorageLike } = {}): CursorStore {
  const options = typeof prefixOrOptions === 'string' ? { prefix: prefixOrOptions } : prefixOrOptions;
  const prefix = options.prefix ?? 'zps:cursor:';
  const storage = () => options.storage ?? (globalThis as { localStorage?: StorageLike }).localStorage;
  return {
    load(room) {
      try {
        const raw = storage()?.getItem(prefix + room);
        const v = raw ? (JSON.parse(raw) as RoomPosition) : undefined;
        return v && typeof v.sequence === 'number' ? v : undefined;
      } catch {
        return undefined; // unreadable or disabled storage: resume as if new
      }
    },
    save(room, position) {
      try {
        storage()?.setItem(prefix + room, JSON.stringify(position));
      } catch {
        // quota or privacy mode: positions stay in memory for this page
      }
    },
    delete(room) {
      storage()?.removeItem(prefix + room);
    },
  };
}
