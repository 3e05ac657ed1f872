// Build: tsc emits dist/*.js + *.d.ts (ESM); esbuild bundles dist/zps.min.js (core)
// and dist/react.min.js (hooks, React external). `--demo` builds dist-demo/.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const demo = process.argv.includes('--demo');
/** Property names used only inside the client (checked against protocol.ts, types.ts, api.ts and the public interfaces). */
const internalProps = `
    ackDue anchored awaiting busy canRequest catchUp conn enterMsg entered forget items lastRequest
    nextExpected notices outstanding overflowed pendingLen pushDiscontinuity reserve resubscribeAt
    schedule sendFrame sendSubscribe sendWithProvider settle starved synced tokenWait verifyReset
    watchers onReady onDisconnect onSubscribed onEvent onReplay onReplayError flushAcks pollReplay
    wantsTimer deadline popReady skipThrough resumePosition sentPosition viaWildcard tune sink
    onState onChangeMessage handle unblock remove confirm io report wake throttleMs pageSize
    maxBuffer lastSeen due pushNotice drain offer missing confirmed handler opts exact patterns
    acks answered after accepts full refuse run online waiters wait tracks states closed blocked
    next queue reset sent timer order onGap fail owner slot removeAll tick msg discontinuity
    opened subprotocolRefused baseUrl store timeoutMs ackMs onErrorMessage onDiscontinuityMessage timeout
    stalledReads forgetRequests
`.trim().split(/\s+/);
const common = { bundle: true, format: 'esm', minify: true, target: ['es2022'], platform: 'neutral', legalComments: 'none' };

if (!demo) {
  rmSync('dist', { recursive: true, force: true });
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  // Code splitting: SSE and compact frames become chunks loaded on first use.
  // Smaller core: internal property names (never in protocol messages, options or
  // public objects) are mangled, and class fields use assignment semantics.
  await build({
    ...common,
    entryPoints: { 'zps.min': 'src/index.ts' },
    outdir: 'dist',
    splitting: true,
    chunkNames: 'zps-[name]-[hash].min',
    mangleProps: new RegExp(`^(${internalProps.join('|')})$`),
    tsconfigRaw: { compilerOptions: { useDefineForClassFields: false } },
  });
  await build({ ...common, entryPoints: ['src/react.ts'], outfile: 'dist/react.min.js', external: ['react'] });
  const sizes = {};
  for (const f of readdirSync('dist').filter((f) => f.endsWith('.min.js'))) {
    const raw = readFileSync(`dist/${f}`);
    sizes[f] = { bytes: raw.length, gzip: gzipSync(raw, { level: 9 }).length };
    console.log(`dist/${f}: ${raw.length} bytes, ${sizes[f].gzip} bytes gzip`);
  }
  // What a page that imports zps.min.js loads before any lazy `import()`: the entry and
  // every chunk it imports statically, transitively (test/size.test.mjs holds it to 8 KB).
  const files = [];
  const visit = (f) => {
    if (files.includes(f)) return;
    files.push(f);
    const code = readFileSync(`dist/${f}`, 'utf8');
    for (const m of code.matchAll(/(?:^|[;}])\s*(?:import|export)\s*(?:[\w$*{},\s]+from\s*)?["']\.\/([^"']+)["']/g)) visit(m[1]);
  };
  visit('zps.min.js');
  sizes.static = { gzip: files.reduce((n, f) => n + sizes[f].gzip, 0), bytes: files.reduce((n, f) => n + sizes[f].bytes, 0), files };
  console.log(`static (${files.join(' + ')}): ${sizes.static.bytes} bytes, ${sizes.static.gzip} bytes gzip`);
  writeFileSync('dist/size.json', JSON.stringify(sizes, null, 1) + '\n');
} else {
  rmSync('dist-demo', { recursive: true, force: true });
  mkdirSync('dist-demo', { recursive: true });
  await build({ ...common, platform: 'browser', entryPoints: ['demo/demo.ts'], outfile: 'dist-demo/demo.js' });
  writeFileSync('dist-demo/index.html', readFileSync('demo/index.html'));
  // The gateway compiles in a committed copy (`--demo`); `--embed` refreshes it.
  // `cargo xtask test` rebuilds dist-demo and fails when the copy is stale.
  if (process.argv.includes('--embed')) {
    const embedded = '../../crates/zps-gateway/assets/demo';
    mkdirSync(embedded, { recursive: true });
    for (const f of ['index.html', 'demo.js']) writeFileSync(`${embedded}/${f}`, readFileSync(`dist-demo/${f}`));
  }
  console.log('dist-demo/index.html + dist-demo/demo.js');
}
