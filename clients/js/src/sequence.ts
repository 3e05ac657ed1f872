/**
 * The ordering rule of one room: each sequence is handed out once, in order,
 * with a bounded buffer for items that arrive ahead of a hole. Pure: no I/O,
 * no clock (mirrors `zps_core::sequence::SequenceTracker`).
 */

/** What happened to an offered item. */
export type Offer = 'accepted' | 'duplicate' | 'gap' | 'overflow';

/** Orders items by `sequence` with a bounded out-of-order buffer. */
export class SequenceTracker<T extends { sequence: number }> {
  private next: number;
  /** Buffered sequences, ascending. */
  private order: number[] = [];
  private items = new Map<number, T>();
  private readonly max: number;

  constructor(lastDelivered = 0, maxPending = 1000) {
    this.next = lastDelivered + 1;
    this.max = Math.max(1, maxPending);
  }

  /** The highest sequence handed out so far. */
  get lastDelivered(): number {
    return this.next - 1;
  }

  /** The sequence that must come next. */
  get nextExpected(): number {
    return this.next;
  }

  /** How many items wait (behind a hole, or ready to pop). */
  get pendingLen(): number {
    return this.order.length;
  }

  /** Offers an item from any source (live, catch-up, replay page). */
  offer(item: T): Offer {
    const seq = item.sequence;
    if (seq < this.next || this.items.has(seq)) return 'duplicate';
    if (seq > this.next && this.order.length >= this.max) return 'overflow';
    this.items.set(seq, item);
    const k = this.order;
    if (k.length === 0 || seq > k[k.length - 1]!) k.push(seq);
    else {
      let lo = 0;
      let hi = k.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (k[mid]! < seq) lo = mid + 1;
        else hi = mid;
      }
      k.splice(lo, 0, seq);
    }
    return this.missing() ? 'gap' : 'accepted';
  }

  /** The next in-order item, if it has arrived. */
  popReady(): T | undefined {
    if (this.order[0] !== this.next) return undefined;
    this.order.shift();
    const item = this.items.get(this.next)!;
    this.items.delete(this.next++);
    return item;
  }

  /** The hole `[from, to]` in front of the buffered items, if any. */
  missing(): [number, number] | undefined {
    const first = this.order[0];
    return first !== undefined && first > this.next ? [this.next, first - 1] : undefined;
  }

  /** Declares everything up to `sequence` settled (expired or gone): the cursor jumps there. */
  skipThrough(sequence: number): void {
    if (sequence < this.next) return;
    this.next = sequence + 1;
    while (this.order.length && this.order[0]! < this.next) this.items.delete(this.order.shift()!);
  }

  /** Starts over (a new history, or a new anchor): nothing buffered. */
  reset(lastDelivered: number): void {
    this.next = lastDelivered + 1;
    this.order = [];
    this.items.clear();
  }
}
