// The published shape: `npm pack` produces a tarball that installs into a
// plain temporary Node project (`npm init -y && npm install <tarball> ws`) and
// `import { createRealtimeClient } from '@zero-pub-sub/client'` connects to the
// real gateway binary and receives an event. No browser needed.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startGateway, waitFor } from './helpers.mjs';
import { publishHttp, root } from './e2e-helpers.mjs';

let gw;
before(async () => {
  gw = await startGateway(['--allow-client-publish']);
});
after(async () => {
  await gw?.stop();
});

test('pack: `npm pack` installs into a plain Node project and receives an event over ws', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zps-pack-'));
  try {
    const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_loglevel: 'error', npm_config_fund: 'false', npm_config_audit: 'false', npm_config_update_notifier: 'false' } });
    npm(['pack', '--pack-destination', dir], root);
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
    assert.ok(tarball, 'npm pack wrote a tarball');
    const app = join(dir, 'app');
    mkdirSync(app);
    npm(['init', '-y'], app);
    npm(['install', '--prefer-offline', join(dir, tarball), 'ws'], app);
    writeFileSync(
      join(app, 'main.mjs'),
      `import { createRealtimeClient } from '@zero-pub-sub/client';
import WebSocket from 'ws';
const client = createRealtimeClient({ url: process.argv[2], WebSocket });
const sub = client.subscribe('chat:e2e-pack', async (e) => {
  console.log('EVENT ' + JSON.stringify({ sequence: e.sequence, payload: e.payload }));
  await client.close();
  process.exit(0);
}, { fromSequence: 0 });
await sub.ready;
console.log('READY');
setTimeout(() => { console.error('no event'); process.exit(1); }, 15000);
`,
    );
    const child = spawn(process.execPath, ['main.mjs', gw.url], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise((r) => child.on('exit', r));
    await waitFor(() => out.includes('READY') || child.exitCode !== null, 'the packed client to subscribe', 15_000);
    assert.match(out, /READY/);
    await publishHttp(gw.http, 'chat:e2e-pack', 1, 1);
    assert.equal(await exited, 0, out);
    assert.match(out, /EVENT \{"sequence":1,"payload":\{"name":"node","text":"event 1","i":1\}\}/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
