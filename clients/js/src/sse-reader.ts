/**
 * A minimal `EventSource` built on `fetch` streams, for runtimes without one
 * (Node 20/22, some workers). It reads one stream and never reconnects by
 * itself: the SSE link closes on any failure and the client reconnects with
 * its own backoff and the current positions.
 */
import type { EventSourceLike, FetchLike } from './transport-sse.js';

type Listener = (ev: { data: string }) => void;

/** Reads `text/event-stream` records from `url` with `fetch`; the EventSource subset the SSE link uses. */
export class FetchEventSource implements EventSourceLike {
  /** 0 connecting, 1 open, 2 closed (as in EventSource). */
  readyState = 0;
  onopen: ((ev: never) => void) | null = null;
  onmessage: ((ev: never) => void) | null = null;
  onerror: ((ev: never) => void) | null = null;
  private readonly listeners = new Map<string, Listener[]>();
  private readonly ctl = new AbortController();

  constructor(url: string, fetchFn: FetchLike = globalThis.fetch as unknown as FetchLike) {
    void this.run(url, fetchFn);
  }

  /** Adds a listener for named records (`event: name`). */
  addEventListener(type: string, listener: Listener): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  /** Stops reading; no callback follows. */
  close(): void {
    this.readyState = 2;
    this.ctl.abort();
  }

  private async run(url: string, fetchFn: FetchLike): Promise<void> {
    try {
      const res = (await fetchFn(url, { method: 'GET', headers: { accept: 'text/event-stream' }, signal: this.ctl.signal })) as unknown as {
        ok: boolean;
        body: ReadableStream<Uint8Array> | null;
      };
      if (!res.ok || !res.body) throw new Error('event stream refused');
      if (this.readyState === 2) return;
      this.readyState = 1;
      (this.onopen as ((ev: object) => void) | null)?.({});
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done || this.readyState === 2) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const record = buf.slice(0, i);
          buf = buf.slice(i + 2);
          this.dispatch(record);
          if (this.readyState === 2) return;
        }
      }
    } catch {
      // reported below
    }
    if (this.readyState !== 2) {
      this.readyState = 2;
      (this.onerror as ((ev: object) => void) | null)?.({});
    }
  }

  private dispatch(record: string): void {
    let name = 'message';
    const data: string[] = [];
    for (const line of record.split('\n')) {
      if (!line || line[0] === ':') continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    const ev = { data: data.join('\n') };
    if (name === 'message') (this.onmessage as Listener | null)?.(ev);
    else for (const l of this.listeners.get(name) ?? []) l(ev);
  }
}
