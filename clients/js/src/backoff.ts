/**
 * Reconnect delays with "full jitter": attempt `n` waits a uniform random time
 * in `[0, min(maxMs, minMs * 2^(n-1))]`. Even the first retry is jittered so
 * that clients cut off by the same gateway drain do not all come back at once.
 */

/** Reconnect tuning (same defaults as the Rust client). */
export interface ReconnectOptions {
  /** First delay ceiling in ms (default 250). */
  minMs?: number;
  /** Largest delay ceiling in ms (default 30 000). */
  maxMs?: number;
  /** Consecutive failed attempts before giving up (default: retry forever). */
  maxAttempts?: number;
}

/** The delay before reconnect attempt `attempt` (1-based). */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt - 1, 30));
  return Math.floor(random() * ceiling);
}
