// Running a policy component without jco: every policy component exports the same WIT interface
// (aci:cache/policy@0.1.0) and, built by the same toolchain, has the same component-level
// structure around its one core module. jco's glue for such a component depends on that
// structure only (checked on every component of target/policies: the glue of adaptive, fixed,
// budget and hostile is the same text but for the file name), so the glue of a bundled policy
// runs any component of the same *shape* with that component's own core module.
//
// The shape is the SHA-256 of every component-level section except custom sections, with each
// core module replaced by a marker: two components of one shape differ only in their core
// module(s) (and names). js/gen/<policy>/source.json records the shape of what it was built from.
//
// A core module run through a bundled glue must import nothing and export every function of the
// bundled core module with the same type (what the component model's validation would check),
// then it is metered (src/meter.js) like any policy. Anything else is refused: a component of
// another shape (another toolchain, a start function, several modules) needs jco, which
// production installs do not have, and pushed components are never handed to jco (its output is
// JavaScript that would be imported).

import { createHash } from 'node:crypto';

const COMPONENT_HEADER = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
const CORE_HEADER = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
const VALTYPE = { 0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64', 0x7b: 'v128', 0x70: 'funcref', 0x6f: 'externref' };

/** A component the generic loader cannot run; the message says why. */
export class ComponentError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ComponentError';
  }
}

function leb(buf, pos, end) {
  let r = 0;
  let shift = 0;
  for (;;) {
    if (pos >= end) throw new ComponentError('truncated');
    const b = buf[pos++];
    r += (b & 0x7f) * 2 ** shift;
    if (!(b & 0x80)) return [r, pos];
    shift += 7;
    if (shift > 35) throw new ComponentError('bad LEB128');
  }
}

function sections(buf, header, what) {
  if (buf.length < 8 || !buf.subarray(0, 8).equals(header)) throw new ComponentError(`not a ${what}`);
  const out = [];
  let pos = 8;
  while (pos < buf.length) {
    const id = buf[pos++];
    let size;
    [size, pos] = leb(buf, pos, buf.length);
    if (pos + size > buf.length) throw new ComponentError(`truncated ${what} section`);
    out.push({ id, body: buf.subarray(pos, pos + size) });
    pos += size;
  }
  return out;
}

/**
 * The shape of a component and its core modules: `{ shape: hex, modules: Buffer[] }`.
 * Throws ComponentError when `bytes` is not a component.
 */
export function componentShape(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = createHash('sha256');
  h.update(COMPONENT_HEADER);
  const modules = [];
  for (const s of sections(buf, COMPONENT_HEADER, 'WebAssembly component')) {
    if (s.id === 0) continue; // custom sections (names, producers) do not change the glue
    if (s.id === 1) {
      modules.push(s.body);
      h.update('\0core-module\0');
      continue;
    }
    const head = Buffer.alloc(5);
    head[0] = s.id;
    head.writeUInt32LE(s.body.length, 1);
    h.update(head);
    h.update(s.body);
  }
  return { shape: h.digest('hex'), modules };
}

/**
 * The imports and exports of a core module: `{ imports: number, exports: Map<name, kind> }`,
 * a function's kind being `func(i32,i32)->(i32)`.
 */
export function coreInterface(wasm) {
  const buf = Buffer.from(wasm.buffer, wasm.byteOffset, wasm.byteLength);
  const types = [];
  let imports = 0;
  let importedFuncs = 0;
  let funcTypes = [];
  const exports = new Map();
  const vt = (b) => {
    const t = VALTYPE[b];
    if (!t) throw new ComponentError(`unsupported value type 0x${b.toString(16)}`);
    return t;
  };
  for (const s of sections(buf, CORE_HEADER, 'core wasm module')) {
    const b = s.body;
    let pos = 0;
    let n;
    const end = b.length;
    if (s.id === 1) {
      [n, pos] = leb(b, pos, end);
      for (let i = 0; i < n; i++) {
        if (b[pos++] !== 0x60) throw new ComponentError('unsupported type form');
        let np;
        [np, pos] = leb(b, pos, end);
        const params = [];
        for (let j = 0; j < np; j++) params.push(vt(b[pos++]));
        let nr;
        [nr, pos] = leb(b, pos, end);
        const results = [];
        for (let j = 0; j < nr; j++) results.push(vt(b[pos++]));
        types.push(`func(${params.join(',')})->(${results.join(',')})`);
      }
    } else if (s.id === 2) {
      [n, pos] = leb(b, pos, end);
      imports = n;
      for (let i = 0; i < n; i++) {
        let len;
        [len, pos] = leb(b, pos, end);
        pos += len;
        [len, pos] = leb(b, pos, end);
        pos += len;
        const kind = b[pos++];
        if (kind === 0) importedFuncs++;
        break; // any import is refused; the rest need not be read
      }
    } else if (s.id === 3) {
      [n, pos] = leb(b, pos, end);
      funcTypes = [];
      for (let i = 0; i < n; i++) {
        let t;
        [t, pos] = leb(b, pos, end);
        funcTypes.push(t);
      }
    } else if (s.id === 7) {
      [n, pos] = leb(b, pos, end);
      for (let i = 0; i < n; i++) {
        let len;
        [len, pos] = leb(b, pos, end);
        if (pos + len > end) throw new ComponentError('truncated export');
        const name = b.subarray(pos, pos + len).toString('utf8');
        pos += len;
        const kind = b[pos++];
        let idx;
        [idx, pos] = leb(b, pos, end);
        if (kind === 0) {
          const t = types[funcTypes[idx - importedFuncs]];
          exports.set(name, t ?? 'func(?)');
        } else {
          exports.set(name, ['func', 'table', 'memory', 'global', 'tag'][kind] ?? `kind${kind}`);
        }
      }
    }
  }
  return { imports, exports };
}

/**
 * Checks that `wasm` (a pushed component's core module) can stand in for the reference core
 * module `ref` under the reference's glue; throws ComponentError naming the first difference.
 */
export function checkCoreAgainst(wasm, ref) {
  const mine = coreInterface(wasm);
  if (mine.imports > 0) throw new ComponentError('its core module imports something (a policy imports nothing)');
  const want = ref instanceof Map ? ref : coreInterface(ref).exports;
  for (const [name, kind] of want) {
    const got = mine.exports.get(name);
    if (got === undefined) throw new ComponentError(`its core module does not export ${JSON.stringify(name)}`);
    if (got !== kind) throw new ComponentError(`its core module exports ${JSON.stringify(name)} as ${got}, not ${kind}`);
  }
}
