// CPU and memory bounds for an untrusted policy's core module (docs/WIRE.md section 7), added to
// the wasm binary before it is compiled. jco's glue runs the module with V8, which has no fuel:
// instead, every function entry and every loop iteration subtracts its cost from a global
// budget and traps (`unreachable`) when the budget goes negative. Each export is replaced by a
// wrapper that refills the budget and calls the original, so the budget is per call from the
// host and a policy cannot refill it from inside.
//
// Cost of a function entry or of a loop iteration = the number of instructions in that body,
// not counting nested loop bodies (they charge their own iterations): an upper bound on what
// one pass executes, like wasmtime's fuel (one unit per instruction), with the same budget of
// 20,000,000 units per call. The linear memory's maximum is capped at 32 MiB, so memory.grow
// past it fails (the guest's allocator then aborts: a trap).
//
// Understands the MVP opcodes plus sign extension, saturating conversions, bulk memory,
// reference types and tail calls; a module using anything else (SIMD, threads) is refused
// rather than run unmetered.

export const FUEL_PER_CALL = 20_000_000;
export const MAX_MEMORY_PAGES = 512; // 32 MiB

const VALTYPES = new Set([0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f]);

export class MeterError extends Error {
  constructor(message) {
    super(`cannot meter the policy module: ${message}`);
    this.name = 'MeterError';
  }
}

class Reader {
  constructor(buf, pos = 0, end = buf.length) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }
  byte() {
    if (this.pos >= this.end) throw new MeterError('unexpected end');
    return this.buf[this.pos++];
  }
  u32() {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = this.byte();
      result += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return result;
      shift += 7;
      if (shift > 35) throw new MeterError('bad LEB128');
    }
  }
  skipLeb() {
    for (let i = 0; i < 10; i++) if (!(this.byte() & 0x80)) return;
    throw new MeterError('bad LEB128');
  }
  bytes(n) {
    if (this.pos + n > this.end) throw new MeterError('unexpected end');
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

function u32(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

function s32(n) {
  const out = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

function section(id, content) {
  return Buffer.concat([Buffer.from([id, ...u32(content.length)]), content]);
}

function vec(items) {
  return Buffer.concat([Buffer.from(u32(items.length)), ...items]);
}

function skipBlockType(r) {
  const b = r.buf[r.pos];
  if (b === 0x40 || VALTYPES.has(b)) r.pos++;
  else r.skipLeb(); // s33 type index
}

// Skips one instruction's immediates; returns its opcode.
function skipInstr(r) {
  const op = r.byte();
  switch (op) {
    case 0x02: case 0x03: case 0x04:
      skipBlockType(r);
      break;
    case 0x0c: case 0x0d: case 0x10: case 0x12:
    case 0x20: case 0x21: case 0x22: case 0x23: case 0x24: case 0x25: case 0x26:
    case 0xd2:
      r.skipLeb();
      break;
    case 0x0e: {
      const n = r.u32();
      for (let i = 0; i <= n; i++) r.skipLeb();
      break;
    }
    case 0x11: case 0x13:
      r.skipLeb();
      r.skipLeb();
      break;
    case 0x1c: {
      const n = r.u32();
      r.bytes(n);
      break;
    }
    case 0x3f: case 0x40:
      r.skipLeb();
      break;
    case 0x41: case 0x42:
      r.skipLeb();
      break;
    case 0x43:
      r.bytes(4);
      break;
    case 0x44:
      r.bytes(8);
      break;
    case 0xd0:
      r.byte();
      break;
    case 0xfc: {
      const sub = r.u32();
      if (sub <= 7) break;
      if (sub === 8 || sub === 10 || sub === 12 || sub === 14) {
        r.skipLeb();
        r.skipLeb();
      } else if (sub <= 17) r.skipLeb();
      else throw new MeterError(`unsupported opcode 0xfc ${sub}`);
      break;
    }
    default:
      if (op >= 0x28 && op <= 0x3e) {
        r.skipLeb();
        r.skipLeb();
      } else if (
        op === 0x00 || op === 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a || op === 0x1b ||
        (op >= 0x45 && op <= 0xc4) || op === 0xd1
      ) {
        // no immediates
      } else {
        throw new MeterError(`unsupported opcode 0x${op.toString(16)}`);
      }
  }
  return op;
}

function meterSnippet(g, cost) {
  const G = u32(g);
  return [
    0x23, ...G, 0x41, ...s32(cost), 0x6b, 0x24, ...G, // budget -= cost
    0x23, ...G, 0x41, 0x00, 0x48, 0x04, 0x40, 0x00, 0x0b, // if budget < 0: unreachable
  ];
}

// Rewrites one function body (locals + expression) with metering at entry and in every loop.
function meterBody(body, g) {
  const r = new Reader(body);
  const nLocalDecls = r.u32();
  for (let i = 0; i < nLocalDecls; i++) {
    r.skipLeb();
    r.byte();
  }
  const codeStart = r.pos;
  // Frames: the function, then each open block; loops (and the function) collect costs.
  const inserts = []; // { at, cost }
  const frames = [{ meter: { at: codeStart, cost: 0 } }];
  let meterStack = [frames[0].meter];
  while (r.pos < r.end) {
    const op = skipInstr(r);
    meterStack[meterStack.length - 1].cost++;
    if (op === 0x02 || op === 0x04) frames.push({ meter: null });
    else if (op === 0x03) {
      const m = { at: r.pos, cost: 0 };
      frames.push({ meter: m });
      meterStack.push(m);
    } else if (op === 0x0b) {
      const f = frames.pop();
      if (f.meter) {
        meterStack.pop();
        inserts.push(f.meter);
      }
      if (frames.length === 0) break;
    }
  }
  if (frames.length !== 0 || r.pos !== r.end) throw new MeterError('unbalanced function body');
  inserts.sort((a, b) => a.at - b.at);
  const parts = [];
  let last = 0;
  for (const ins of inserts) {
    parts.push(body.subarray(last, ins.at), Buffer.from(meterSnippet(g, Math.max(1, ins.cost))));
    last = ins.at;
  }
  parts.push(body.subarray(last));
  return Buffer.concat(parts);
}

/**
 * Returns the module `wasm` with a per-call CPU budget and a 32 MiB memory cap.
 * @param {Uint8Array} wasm a core module
 * @param {{ fuel?: number, maxPages?: number }} [opts]
 */
export function meterModule(wasm, { fuel = FUEL_PER_CALL, maxPages = MAX_MEMORY_PAGES } = {}) {
  const buf = Buffer.from(wasm.buffer, wasm.byteOffset, wasm.byteLength);
  if (buf.length < 8 || buf.readUInt32LE(0) !== 0x6d736100 || buf.readUInt32LE(4) !== 1) {
    throw new MeterError('not a core wasm module');
  }
  const r = new Reader(buf, 8);
  const sections = [];
  while (r.pos < r.end) {
    const id = r.byte();
    const size = r.u32();
    sections.push({ id, body: r.bytes(size) });
  }
  const types = [];
  let importedFuncs = 0;
  let importedGlobals = 0;
  let funcTypes = [];
  let definedGlobals = 0;
  for (const s of sections) {
    const sr = new Reader(s.body);
    if (s.id === 1) {
      const n = sr.u32();
      for (let i = 0; i < n; i++) {
        if (sr.byte() !== 0x60) throw new MeterError('unsupported type form');
        const np = sr.u32();
        sr.bytes(np);
        const nr = sr.u32();
        sr.bytes(nr);
        types.push(np);
      }
    } else if (s.id === 2) {
      const n = sr.u32();
      for (let i = 0; i < n; i++) {
        sr.bytes(sr.u32());
        sr.bytes(sr.u32());
        const kind = sr.byte();
        if (kind === 0) {
          sr.skipLeb();
          importedFuncs++;
        } else if (kind === 1) {
          sr.byte();
          const fl = sr.byte();
          sr.skipLeb();
          if (fl & 1) sr.skipLeb();
        } else if (kind === 2) {
          throw new MeterError('an imported memory cannot be capped');
        } else if (kind === 3) {
          sr.byte();
          sr.byte();
          importedGlobals++;
        } else throw new MeterError(`unsupported import kind ${kind}`);
      }
    } else if (s.id === 3) {
      const n = sr.u32();
      funcTypes = Array.from({ length: n }, () => sr.u32());
    } else if (s.id === 6) {
      definedGlobals = sr.u32();
    }
  }
  const g = importedGlobals + definedGlobals; // index of the budget global
  const nDefined = funcTypes.length;
  const wrapperOf = new Map(); // original func index -> wrapper func index
  const out = [buf.subarray(0, 8)];
  const hasGlobalSection = sections.some((s) => s.id === 6);
  const budgetGlobal = Buffer.from([0x7f, 0x01, 0x41, ...s32(fuel), 0x0b]);
  // Exports first: the wrappers they need decide the function and code sections.
  const exportSection = sections.find((s) => s.id === 7);
  let newExports = null;
  if (exportSection) {
    const sr = new Reader(exportSection.body);
    const n = sr.u32();
    const items = [];
    for (let i = 0; i < n; i++) {
      const nameLen = sr.u32();
      const name = sr.bytes(nameLen);
      const kind = sr.byte();
      let idx = sr.u32();
      if (kind === 0) {
        if (idx < importedFuncs) throw new MeterError('an imported function is exported');
        if (!wrapperOf.has(idx)) wrapperOf.set(idx, importedFuncs + nDefined + wrapperOf.size);
        idx = wrapperOf.get(idx);
      }
      items.push(Buffer.from([...u32(nameLen), ...name, kind, ...u32(idx)]));
    }
    newExports = vec(items);
  }
  const wrapped = [...wrapperOf.keys()];
  let insertedGlobal = hasGlobalSection;
  for (const s of sections) {
    if (!insertedGlobal && [7, 8, 9, 12, 10, 11].includes(s.id)) {
      out.push(section(6, vec([budgetGlobal])));
      insertedGlobal = true;
    }
    if (s.id === 3) {
      const extra = wrapped.map((f) => Buffer.from(u32(funcTypes[f - importedFuncs])));
      out.push(section(3, vec([...funcTypes.map((t) => Buffer.from(u32(t))), ...extra])));
    } else if (s.id === 5) {
      const sr = new Reader(s.body);
      const n = sr.u32();
      const mems = [];
      for (let i = 0; i < n; i++) {
        const fl = sr.byte();
        const min = sr.u32();
        const max = fl & 1 ? sr.u32() : Infinity;
        if (fl & ~1) throw new MeterError('unsupported memory flags');
        if (min > maxPages) throw new MeterError(`the module needs ${min} pages of memory, over the cap of ${maxPages}`);
        mems.push(Buffer.from([0x01, ...u32(min), ...u32(Math.min(max, maxPages))]));
      }
      out.push(section(5, vec(mems)));
    } else if (s.id === 6) {
      const sr = new Reader(s.body);
      sr.u32();
      const rest = s.body.subarray(sr.pos);
      out.push(section(6, Buffer.concat([Buffer.from(u32(definedGlobals + 1)), rest, budgetGlobal])));
    } else if (s.id === 7) {
      out.push(section(7, newExports));
    } else if (s.id === 10) {
      const sr = new Reader(s.body);
      const n = sr.u32();
      if (n !== nDefined) throw new MeterError('function and code sections disagree');
      const bodies = [];
      for (let i = 0; i < n; i++) {
        const size = sr.u32();
        const metered = meterBody(sr.bytes(size), g);
        bodies.push(Buffer.concat([Buffer.from(u32(metered.length)), metered]));
      }
      for (const f of wrapped) {
        const nParams = types[funcTypes[f - importedFuncs]];
        const code = [0x00, 0x41, ...s32(fuel), 0x24, ...u32(g)];
        for (let p = 0; p < nParams; p++) code.push(0x20, ...u32(p));
        code.push(0x10, ...u32(f), 0x0b);
        bodies.push(Buffer.from([...u32(code.length), ...code]));
      }
      out.push(section(10, vec(bodies)));
    } else {
      out.push(section(s.id, s.body));
    }
  }
  return Buffer.concat(out);
}
