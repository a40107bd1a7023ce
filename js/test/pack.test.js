// `npm pack` gives a tarball that installs into an empty project and runs the original
// README's Node quick start against a real redis-server: glue and policies inside, nothing
// built at install time, no jco installed (ioredis comes from npm's cache when it is there:
// --prefer-offline). Slow (~10-30 s): ACI_SKIP_PACK=1 skips it.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { policyDir } from '../src/policy.js';
import { sleep, startRedis, until } from './redis-server.js';

const JS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const skip = process.env.ACI_SKIP_PACK === '1';
let srv;
let dir;
before(async () => {
  if (skip) return;
  srv = await startRedis();
  dir = mkdtempSync(path.join(os.tmpdir(), 'aci-pack-'));
});
after(async () => {
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('npm pack -> npm install into an empty project -> README quick start', { skip, timeout: 180_000 }, async () => {
  const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  npm(['pack', '--pack-destination', dir, '--silent'], JS);
  const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  assert.equal(tgz, 'aci-cache-0.1.0.tgz');
  const files = execFileSync('tar', ['tzf', path.join(dir, tgz)], { encoding: 'utf8' }).split('\n');
  for (const f of ['package/src/index.js', 'package/types/index.d.ts', 'package/bin/aci-node.js',
    'package/gen/adaptive/adaptive.js', 'package/gen/adaptive/adaptive.core.wasm', 'package/gen/fixed/fixed.core.wasm']) {
    assert.ok(files.includes(f), `${f} missing from the tarball`);
  }
  assert.ok(!files.some((f) => f.includes('/.cache/') || f.startsWith('package/test/')), 'test or cache files packed');

  const proj = path.join(dir, 'app');
  execFileSync('mkdir', ['-p', proj]);
  writeFileSync(path.join(proj, 'package.json'), '{"name":"app","version":"1.0.0","type":"module","private":true}\n');
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', `../${tgz}`, 'ioredis@5'], proj);
  assert.ok(!existsSync(path.join(proj, 'node_modules', '@bytecodealliance')), 'jco was installed');

  writeFileSync(path.join(proj, 'index.mjs'), `import Redis from "ioredis";
import { AdaptiveCache } from "aci-cache";

const cache = new AdaptiveCache({ redis: new Redis() });
await cache.start();

await cache.set("user:42", JSON.stringify({ name: "Alice" }));
const data = await cache.get("user:42");

console.log(cache.strategy);           // "ttl" | "batched" | "eager"
console.log(cache.statsSnapshot.totalWrites);

await cache.stop();
console.log(data);
`);
  // `new Redis()` means 127.0.0.1:6379; the preload points ioredis's default at our server.
  writeFileSync(path.join(proj, 'preload.mjs'), `import { DEFAULT_REDIS_OPTIONS } from 'ioredis/built/redis/RedisOptions.js';
DEFAULT_REDIS_OPTIONS.port = ${srv.port};
`);
  const child = spawn(process.execPath, ['--import', './preload.mjs', 'index.mjs'], { cwd: proj, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.on('exit', r));
  try {
    // The snippet keeps its own `new Redis()` open, as written: once stop() has run (last line
    // printed), the process is ended here.
    await until(() => out.trim().split('\n').length >= 3 || child.exitCode !== null, 30_000, `output (stderr: ${err})`);
    await sleep(50);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  assert.equal(err, '');
  const lines = out.trim().split('\n');
  assert.match(lines[0], /^(ttl|batched|eager)$/);
  assert.equal(lines[1], '1');
  assert.equal(lines[2], '{"name":"Alice"}');

  // Without jco, a component that is not bundled (as a pushed one) runs through the glue of a
  // bundled policy of the same layout; one of another layout is refused, not run.
  const hostile = path.join(policyDir(), 'hostile.wasm');
  const trapOnLoad = path.join(policyDir(), 'trap-on-load.wasm');
  writeFileSync(path.join(proj, 'generic.mjs'), `import { readFileSync } from 'node:fs';
import { loadComponent, loadPolicy } from 'aci-cache/policy';
const m = await loadComponent(readFileSync(${JSON.stringify(hostile)}));
const p = await m.instantiate();
console.log(p.describe().name, p.recordWrite('k', 1));
console.log((await loadPolicy(${JSON.stringify(hostile)})).describe().name);
try { await loadComponent(readFileSync(${JSON.stringify(trapOnLoad)})); console.log('loaded'); } catch (e) { console.log(e.name); }
`);
  const generic = execFileSync(process.execPath, ['generic.mjs'], { cwd: proj, encoding: 'utf8' }).trim().split('\n');
  assert.deepEqual(generic, ['hostile ttl', 'hostile', 'InvalidComponent']);
});
