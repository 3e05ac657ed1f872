// Build: tsc emits dist/*.js + *.d.ts (ESM); esbuild bundles dist/zps.min.js (core)
// and dist/react.min.js (hooks, React external). `--demo` builds dist-demo/.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const demo = process.argv.includes('--demo');
const common = { bundle: true, format: 'esm', minify: true, target: ['es2022'], platform: 'neutral', legalComments: 'none' };

if (!demo) {
  rmSync('dist', { recursive: true, force: true });
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  // Code splitting: SSE and compact frames become chunks loaded on first use.
  await build({ ...common, entryPoints: { 'zps.min': 'src/index.ts' }, outdir: 'dist', splitting: true, chunkNames: 'zps-[name]-[hash].min' });
  await build({ ...common, entryPoints: ['src/react.ts'], outfile: 'dist/react.min.js', external: ['react'] });
  const sizes = {};
  for (const f of readdirSync('dist').filter((f) => f.endsWith('.min.js'))) {
    const raw = readFileSync(`dist/${f}`);
    sizes[f] = { bytes: raw.length, gzip: gzipSync(raw, { level: 9 }).length };
    console.log(`dist/${f}: ${raw.length} bytes, ${sizes[f].gzip} bytes gzip`);
  }
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
