// CORS of the browser-facing HTTP routes (`/events`, `/api/v1`) against the
// real gateway started with --allowed-origins: preflights as a browser sends
// them, from a listed origin and from another one.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startGateway } from './helpers.mjs';

const ALLOWED = 'http://app.example.test:5173';
const OTHER = 'http://evil.example.test';

let gw;
before(async () => {
  gw = await startGateway(['--allowed-origins', ALLOWED, '--allow-client-publish']);
});
after(async () => {
  await gw?.stop();
});

/** An OPTIONS preflight: resolves { status, headers }. */
async function preflight(path, origin, method, requestHeaders) {
  const res = await fetch(`${gw.http}${path}`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': requestHeaders },
  });
  await res.arrayBuffer();
  return { status: res.status, headers: res.headers };
}

/** A comma-separated header as a lower-case list. */
const list = (headers, name) => (headers.get(name) ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);

test('cors: a preflight on /events from a listed origin allows that origin and Last-Event-ID', async () => {
  const { status, headers } = await preflight('/events', ALLOWED, 'GET', 'last-event-id');
  assert.ok(status >= 200 && status < 300, `preflight answered ${status}`);
  assert.equal(headers.get('access-control-allow-origin'), ALLOWED);
  assert.ok(list(headers, 'access-control-allow-headers').includes('last-event-id'), `allow-headers: ${headers.get('access-control-allow-headers')}`);
  assert.ok(list(headers, 'access-control-allow-methods').includes('get'), `allow-methods: ${headers.get('access-control-allow-methods')}`);
  // Credentials travel in the Authorization header, never in cookies.
  assert.equal(headers.get('access-control-allow-credentials'), null);
});

test('cors: the same preflight from an origin not listed is not allowed', async () => {
  const { headers } = await preflight('/events', OTHER, 'GET', 'last-event-id');
  const allowOrigin = headers.get('access-control-allow-origin');
  assert.notEqual(allowOrigin, OTHER);
  assert.notEqual(allowOrigin, '*');
  assert.equal(allowOrigin, null, `no Access-Control-Allow-Origin for ${OTHER}: got ${allowOrigin}`);
});

test('cors: a preflight on /api/v1/publish with authorization and content-type from the listed origin is allowed', async () => {
  const { status, headers } = await preflight('/api/v1/publish', ALLOWED, 'POST', 'authorization, content-type');
  assert.ok(status >= 200 && status < 300, `preflight answered ${status}`);
  assert.equal(headers.get('access-control-allow-origin'), ALLOWED);
  const allowHeaders = list(headers, 'access-control-allow-headers');
  for (const h of ['authorization', 'content-type']) assert.ok(allowHeaders.includes(h), `allow-headers lacks ${h}: ${allowHeaders.join()}`);
  assert.ok(list(headers, 'access-control-allow-methods').includes('post'), `allow-methods: ${headers.get('access-control-allow-methods')}`);
  // The request that follows gets the origin back too.
  const res = await fetch(`${gw.http}/api/v1/publish`, {
    method: 'POST',
    headers: { origin: ALLOWED, 'content-type': 'application/json' },
    body: JSON.stringify({ room: 'chat:cors', type: 'm', payload: {} }),
  });
  const body = await res.text();
  assert.equal(res.status, 200, body);
  assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED);
});
