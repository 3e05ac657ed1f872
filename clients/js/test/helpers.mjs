// Test helpers: start the real gateway binary, sign HS256 tokens, wait for conditions.
// The gateway binary comes from ZPS_GATEWAY_BIN (the Rust test runner sets it);
// the default is /tmp/zps-gw-for-js. A missing binary fails the tests loudly.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import WebSocket, { WebSocketServer } from 'ws';

export const GATEWAY_BIN = process.env.ZPS_GATEWAY_BIN || '/tmp/zps-gw-for-js';

/** Starts `gateway --port 0` with `args`; resolves { port, url, http, stop(), kill() }. */
export async function startGateway(args = []) {
  if (!existsSync(GATEWAY_BIN)) {
    throw new Error(`gateway binary not found at ${GATEWAY_BIN}: build it (cargo build -p zps-cli) and set ZPS_GATEWAY_BIN`);
  }
  const child = spawn(
    GATEWAY_BIN,
    ['gateway', '--port', '0', '--max-messages-per-window', '100000', '--drain-timeout-ms', '200', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1' } },
  );
  let out = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${out}`)), 10_000);
    const onData = (d) => {
      out += d;
      const m = /listening on ws:\/\/[^:]+:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`gateway exited (${code}):\n${out}`)));
  });
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  return { port, url: `ws://127.0.0.1:${port}/ws`, http: `http://127.0.0.1:${port}`, stop };
}

/** An HS256 JWT. */
export function signJwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** Resolves when `cond()` is truthy; rejects with `what` after `ms`. */
export async function waitFor(cond, what = 'condition', ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A `ws` WebSocket that remembers its instances (to terminate them like a
 * network failure) and the frames the client sent, and can drop chosen
 * incoming event frames (to create gaps).
 */
export function instrumentedWebSocket() {
  const sockets = [];
  const sent = [];
  const dropSequences = new Set();
  class Instrumented extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
    set onmessage(fn) {
      super.onmessage = fn && ((ev) => {
        if (typeof ev.data === 'string' && dropSequences.size) {
          const m = JSON.parse(ev.data);
          if (m.type === 'event' && dropSequences.delete(m.data.sequence)) return;
        }
        fn(ev);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return {
    WebSocket: Instrumented,
    sockets,
    sent,
    dropSequences,
    /** Kills the newest open socket without a close handshake. */
    terminate() {
      const s = sockets.filter((x) => x.readyState === WebSocket.OPEN).pop();
      if (!s) throw new Error('no open socket');
      s.terminate();
    },
  };
}

/** Collects a subscription's sequences; `assertExactly(n)` checks 1..n once each, in order. */
export function collector() {
  const seqs = [];
  const events = [];
  return {
    seqs,
    events,
    handler: (e) => {
      seqs.push(e.sequence);
      events.push(e);
    },
  };
}

/** [from, from+1, …, to]. */
export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * A stand-in gateway of the test's own (a `ws` server): answers `init` with `ready` as the
 * gateway does, pings with pongs when `answerPings`, and hands other frames to
 * `onFrame(msg, send)`. Records each connection: { opened, ready, pings, frames, closed, closeCode }.
 */
export async function fakeGateway({ answerPings = true, onFrame } = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const conns = [];
  wss.on('connection', (socket) => {
    const conn = { opened: Date.now(), ready: undefined, pings: [], frames: [], closed: undefined, closeCode: undefined };
    conns.push(conn);
    const send = (m) => socket.send(JSON.stringify(m));
    socket.on('message', (data) => {
      const m = JSON.parse(String(data));
      conn.frames.push(m);
      if (m.type === 'init') {
        conn.ready = Date.now();
        send({ type: 'ready', subscriberId: m.subscriberId, connectionId: `c${conns.length}` });
      } else if (m.type === 'ping') {
        conn.pings.push(Date.now());
        if (answerPings) send({ type: 'pong', id: m.id });
      } else onFrame?.(m, send);
    });
    socket.on('close', (code) => {
      conn.closed = Date.now();
      conn.closeCode = code;
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns,
    close: () =>
      new Promise((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

export { WebSocket };
