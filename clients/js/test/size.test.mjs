// The bundle budget: what a page using WebSocket + JSON loads up front
// (dist/zps.min.js plus every chunk it imports statically, gzip level 9 per
// file, summed; written by build.mjs) stays within 8 KB.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';

const BUDGET = 8192;
const dist = new URL('../dist/', import.meta.url);

test('size: zps.min.js and its static imports stay within 8 KB min+gzip', () => {
  const sizes = JSON.parse(readFileSync(new URL('size.json', dist), 'utf8'));
  const { gzip, files } = sizes.static ?? {};
  assert.ok(Array.isArray(files) && files[0] === 'zps.min.js', `dist/size.json has no static total: ${JSON.stringify(sizes.static)}`);
  // The recorded total matches the files as built.
  const measured = files.reduce((n, f) => n + gzipSync(readFileSync(new URL(f, dist)), { level: 9 }).length, 0);
  assert.equal(gzip, measured);
  // Every static import of a listed file is listed (lazy `import()` chunks are not static).
  for (const f of files) {
    const code = readFileSync(new URL(f, dist), 'utf8');
    for (const m of code.matchAll(/(?:^|[;}])\s*(?:import|export)\s*(?:[\w$*{},\s]+from\s*)?["']\.\/([^"']+)["']/g)) {
      assert.ok(files.includes(m[1]), `${f} imports ${m[1]} statically, missing from size.json's static files`);
    }
  }
  assert.ok(gzip <= BUDGET, `static footprint ${gzip} B gzip (${files.join(' + ')}) exceeds the ${BUDGET} B budget`);
});

test('size: presence, SSE and compact frames are lazy chunks', () => {
  const core = readFileSync(new URL('zps.min.js', dist), 'utf8');
  for (const chunk of ['presence', 'transport-sse', 'sse-reader', 'compact']) {
    assert.match(core, new RegExp(`import\\("\\./zps-${chunk}-[\\w-]+\\.min\\.js"\\)`), `${chunk} is loaded with import()`);
  }
});
