#!/usr/bin/env node
// Build step: transpiles the policy components with jco into js/gen/<policy>/.
//
//   node scripts/transpile.js [--if-present] [--force] [policy-name | path/to/x.wasm ...]
//
// Without names: the bundled policies listed in guest/policies.txt (one name per line, #
// comments), from the policy directory ($ACI_POLICY_DIR, else <repo>/target/policies; build
// them with `cargo xtask policies`).
// Skips a policy whose js/gen/<policy>/source.json already names the same component (SHA-256)
// and jco version, so running it again is cheap. --if-present (used by npm's `prepare`) warns
// instead of failing when a component is missing; --force transpiles again regardless.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { GEN_DIR, bundledPolicies, policyDir } from '../src/policy.js';
import { jcoVersion, transpileFile } from '../src/transpile.js';

const DEFAULT_POLICIES = bundledPolicies();

const args = process.argv.slice(2);
const ifPresent = args.includes('--if-present');
const force = args.includes('--force');
const unknown = args.filter((a) => a.startsWith('-') && a !== '--if-present' && a !== '--force');
if (unknown.length) {
  console.error(`transpile: unknown option ${unknown.join(' ')}`);
  process.exit(2);
}
const specs = args.filter((a) => !a.startsWith('-'));

let missing = 0;
for (const spec of specs.length ? specs : DEFAULT_POLICIES) {
  const isPath = spec.endsWith('.wasm') || spec.includes('/') || spec.includes(path.sep);
  const component = isPath ? path.resolve(spec) : path.join(policyDir(), `${spec}.wasm`);
  const name = path.basename(component, '.wasm');
  if (!existsSync(component)) {
    missing++;
    const hint = `no component at ${component} (build the policies with: cargo xtask policies)`;
    console.error(`transpile: ${ifPresent ? 'skipped ' + name + ': ' : ''}${hint}`);
    continue;
  }
  const outDir = path.join(GEN_DIR, name);
  const { fresh } = await transpileFile(component, outDir, { name, force });
  const rel = path.relative(process.cwd(), outDir) || '.';
  console.log(`transpile: ${name} -> ${rel} (${fresh ? 'jco ' + jcoVersion() : 'up to date'})`);
}
if (missing && !ifPresent) process.exit(1);
