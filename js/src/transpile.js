// Turns a policy component (.wasm) into ES module glue + core wasm with jco, written under
// js/gen/. Used by scripts/transpile.js (the build step) and, on demand, by loadPolicy when the
// component it is asked for has no up-to-date transpiled copy.
//
// Every output directory carries a stamp, source.json, naming the component it was made from by
// SHA-256 and the jco version that made it, so a stale copy is never loaded by mistake.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentShape } from './component.js';

export const STAMP = 'source.json';

export function sha256(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The stamp of a transpiled directory, or null when it has none (or an unreadable one). */
export function readStamp(dir) {
  try {
    return JSON.parse(readFileSync(path.join(dir, STAMP), 'utf8'));
  } catch {
    return null;
  }
}

/** Version of the installed jco, or null when it is not installed (production installs). */
export function jcoVersion() {
  let dir;
  try {
    // jco's package.json is not in its "exports": walk up from its entry point instead.
    dir = path.dirname(fileURLToPath(import.meta.resolve('@bytecodealliance/jco')));
  } catch {
    return null;
  }
  for (; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
      if (pkg.name === '@bytecodealliance/jco') return pkg.version;
    } catch {
      // no package.json at this level
    }
  }
  return null;
}

async function loadJco() {
  try {
    return await import('@bytecodealliance/jco');
  } catch (err) {
    throw new Error(
      'transpiling a policy component needs @bytecodealliance/jco (a devDependency): ' +
        'run `npm ci` in js/, or ship js/gen/ built by `npm run build`',
      { cause: err },
    );
  }
}

/**
 * Transpiles `bytes` (a component) into `outDir` as `<name>.js` + `<name>.core.wasm` (+ .d.ts),
 * in jco's `--instantiation async` mode: the glue exports `instantiate(getCoreModule, imports)`,
 * so every call makes a fresh instance. Writes into a temporary sibling directory first and
 * moves it into place, so a reader never sees a half-written directory.
 */
export async function transpileInto(bytes, outDir, { name, source }) {
  const { transpile } = await loadJco();
  const { files } = await transpile(bytes, {
    name,
    instantiation: 'async',
    // The engine imports nothing: no WASI shim, no fetch fallback for Node.
    wasiShim: false,
    nodejsCompat: false,
    // Keep the core wasm a separate file however small it is (compiled once per process).
    base64Cutoff: 0,
  });
  const parent = path.dirname(outDir);
  await mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    for (const [file, contents] of Object.entries(files)) {
      const dest = path.join(tmp, file);
      await mkdir(path.dirname(dest), { recursive: true });
      await writeFile(dest, contents);
    }
    // shape: what lets src/policy.js run other components of the same layout with this glue.
    const stamp = { component: source, sha256: sha256(bytes), jco: jcoVersion(), name, shape: componentShape(bytes).shape };
    await writeFile(path.join(tmp, STAMP), JSON.stringify(stamp, null, 1) + '\n');
    await swapInto(tmp, outDir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return outDir;
}

// Puts `tmp` at `outDir`, replacing what was there. When another process got there first with
// the same content (same stamp), its copy is kept.
async function swapInto(tmp, outDir) {
  try {
    await rename(tmp, outDir);
    return;
  } catch (err) {
    if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
  }
  const mine = readStamp(tmp);
  const theirs = readStamp(outDir);
  if (theirs && mine && theirs.sha256 === mine.sha256 && theirs.jco === mine.jco && theirs.name === mine.name) return;
  const old = `${outDir}.old-${process.pid}-${randomBytes(4).toString('hex')}`;
  await rename(outDir, old);
  try {
    await rename(tmp, outDir);
  } finally {
    await rm(old, { recursive: true, force: true });
  }
}

/** Transpiles the component file at `componentPath` into `outDir` unless the stamp there matches. */
export async function transpileFile(componentPath, outDir, { name, force = false } = {}) {
  const bytes = await readFile(componentPath);
  const stamp = readStamp(outDir);
  const version = jcoVersion();
  if (!force && stamp && stamp.sha256 === sha256(bytes) && stamp.jco === version && stamp.name === name) {
    if (!stamp.shape) {
      // A copy made before stamps carried the shape: the glue is the same, the stamp gains it.
      stamp.shape = componentShape(bytes).shape;
      await writeFile(path.join(outDir, STAMP), JSON.stringify(stamp, null, 1) + '\n');
    }
    return { outDir, fresh: false };
  }
  await transpileInto(bytes, outDir, { name, source: componentPath });
  return { outDir, fresh: true };
}
