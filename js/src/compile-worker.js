// Off the event loop: hashes a component, checks it against the bundled glues' shapes
// (src/component.js), meters its core module (src/meter.js) and compiles it. A pushed component
// is up to 4 MiB: metering and compiling it on the main thread would hold up writes and ticks.
// Answers one message: { sha256, mismatch } | { sha256, error } | { sha256, ref, module }.

import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { checkCoreAgainst, componentShape } from './component.js';
import { meterModule } from './meter.js';

const { bytes, refs, meter, expect } = workerData;
let sha256 = null;
try {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  sha256 = createHash('sha256').update(buf).digest('hex');
  if (expect && sha256 !== expect) {
    parentPort.postMessage({ sha256, mismatch: true });
  } else {
    const { shape, modules } = componentShape(buf);
    const ref = refs.findIndex((r) => r.shape === shape);
    if (ref < 0 || modules.length !== 1) {
      throw new Error(
        `its component layout (shape ${shape.slice(0, 12)}, ${modules.length} core module(s)) is not the one of the ` +
          'bundled policies: this JavaScript host runs components built like them (same WIT interface and toolchain, one core module, no start function)',
      );
    }
    checkCoreAgainst(modules[0], new Map(refs[ref].exports));
    const module = await WebAssembly.compile(meter ? meterModule(modules[0]) : modules[0]);
    parentPort.postMessage({ sha256, ref, module });
  }
} catch (err) {
  parentPort.postMessage({ sha256, error: String(err?.message ?? err) });
}
