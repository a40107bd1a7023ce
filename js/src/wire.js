// The fleet protocol's messages (docs/WIRE.md v2, section 2) and loss detector (section 4).
//
// decode() never throws: it returns a message or { malformed: kind }. Its work is bounded by
// the 1 MiB size check made before anything else (V8's JSON.parse is iterative, so nesting
// depth cannot overflow the stack).

export const MAX_PAYLOAD = 1 << 20;
export const MAX_KEYS = 100_000;
export const KEYS_PER_MESSAGE = 10_000;
export const MAX_U32 = 0xffffffff;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ACTIONS = new Set(['invalidate', 'flush', 'mark', 'strategy_update', 'write_report', 'heartbeat']);
const STRATEGY = new Set(['ttl', 'batched', 'eager']);
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const bad = (kind) => ({ malformed: kind });
const BAD_FIELD = Object.freeze(bad('bad-field'));

// An integer in [lo, hi]: a JSON number with a whole value (17.0 and 1.7e1 are 17).
function int(v, lo, hi) {
  return typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
}

/** Arrays and objects nested deeper than this are not-json (docs/WIRE.md 2.3), as in every host. */
export const MAX_DEPTH = 64;

// Only a payload with more than MAX_DEPTH brackets can nest that deep: the common case is one
// indexOf-free count, and the character scan runs only for payloads that could fail it.
function nestingExceeds(text, max) {
  let brackets = 0;
  for (let i = text.indexOf('['); i !== -1 && brackets <= max; i = text.indexOf('[', i + 1)) brackets++;
  for (let i = text.indexOf('{'); i !== -1 && brackets <= max; i = text.indexOf('{', i + 1)) brackets++;
  if (brackets <= max) return false;
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 92) escaped = true; // backslash
      else if (c === 34) inString = false; // quote
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) {
      if (++depth > max) return true;
    } else if (c === 93 || c === 125) {
      if (depth > 0) depth--;
    }
  }
  return false;
}

/**
 * The checks of docs/WIRE.md 2.3 every channel shares, in order (size, UTF-8 and JSON, nesting,
 * an object): [null, the parsed object], or [{ malformed }, null] (a payload may itself have a
 * `malformed` member: the verdict travels apart from it).
 */
function parseObject(payload) {
  let text;
  if (typeof payload === 'string') {
    // A string payload is measured in UTF-8 bytes, as it travels.
    if (payload.length > MAX_PAYLOAD || Buffer.byteLength(payload, 'utf8') > MAX_PAYLOAD) return [bad('too-large'), null];
    text = payload;
  } else {
    if (payload.length > MAX_PAYLOAD) return [bad('too-large'), null];
    try {
      text = utf8.decode(payload);
    } catch {
      return [bad('not-json'), null];
    }
  }
  if (nestingExceeds(text, MAX_DEPTH)) return [bad('not-json'), null];
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    return [bad('not-json'), null];
  }
  if (m === null || typeof m !== 'object' || Array.isArray(m)) return [bad('not-object'), null];
  return [null, m];
}

/** The common fields of every message (docs/WIRE.md 2.1), or null when one is invalid. */
function originOf(m) {
  // A null member is an absent one (docs/WIRE.md 2.1): `?? default`, not destructuring defaults.
  const source = m.source;
  const epoch = m.epoch ?? null;
  const timestamp = m.timestamp ?? 0;
  if (typeof source !== 'string' || !ID_RE.test(source)) return null;
  if (epoch !== null && (typeof epoch !== 'string' || !ID_RE.test(epoch))) return null;
  if (typeof timestamp !== 'number') return null;
  return { source, epoch, timestamp };
}

/**
 * Decodes one payload (a Buffer / Uint8Array, or a string already decoded) into
 * { action, source, epoch, timestamp, ...per action } with absent optionals as null,
 * or { malformed: 'too-large' | 'not-json' | 'not-object' | 'unknown-action' | 'too-many-keys' | 'bad-field' }.
 */
export function decode(payload) {
  const [malformed, m] = parseObject(payload);
  if (malformed) return malformed;
  const action = m.action;
  if (typeof action === 'string' && !ACTIONS.has(action)) return bad('unknown-action');
  // Only an invalidate's keys count: on other actions `keys` is an unlisted member, ignored.
  if (action === 'invalidate' && Array.isArray(m.keys) && m.keys.length > MAX_KEYS) return bad('too-many-keys');
  if (typeof action !== 'string') return BAD_FIELD;
  const origin = originOf(m);
  if (origin === null) return BAD_FIELD;
  const out = { action, ...origin };
  switch (action) {
    case 'invalidate': {
      const keys = m.keys;
      const strategy = m.strategy ?? null;
      const seq = m.seq ?? null;
      if (!Array.isArray(keys)) return BAD_FIELD;
      for (let i = 0; i < keys.length; i++) if (typeof keys[i] !== 'string') return BAD_FIELD;
      if (strategy !== null && !STRATEGY.has(strategy)) return BAD_FIELD;
      if (seq !== null && !int(seq, 1, MAX_SAFE)) return BAD_FIELD;
      out.keys = keys;
      out.strategy = strategy;
      out.seq = seq;
      return out;
    }
    case 'flush': {
      const seq = m.seq ?? null;
      if (seq !== null && !int(seq, 1, MAX_SAFE)) return BAD_FIELD;
      out.seq = seq;
      return out;
    }
    case 'mark': {
      if (!int(m.inval_seq, 0, MAX_SAFE)) return BAD_FIELD;
      out.inval_seq = m.inval_seq;
      return out;
    }
    case 'strategy_update': {
      const strategy = m.strategy;
      const write_rate = m.write_rate ?? 0;
      const inval_seq = m.inval_seq ?? null;
      if (!STRATEGY.has(strategy)) return BAD_FIELD;
      if (typeof write_rate !== 'number') return BAD_FIELD;
      if (inval_seq !== null && !int(inval_seq, 0, MAX_SAFE)) return BAD_FIELD;
      out.strategy = strategy;
      out.write_rate = write_rate < 0 ? 0 : write_rate;
      out.inval_seq = inval_seq;
      return out;
    }
    case 'write_report': {
      const count = m.count;
      const inval_seq = m.inval_seq ?? null;
      if (!int(count, 0, MAX_U32)) return BAD_FIELD;
      if (inval_seq !== null && !int(inval_seq, 0, MAX_SAFE)) return BAD_FIELD;
      out.count = count;
      out.inval_seq = inval_seq;
      return out;
    }
    default: // heartbeat
      return out;
  }
}

/**
 * Decodes a payload of `P:policy` (docs/WIRE.md 9.3): the checks of 2.3 in order (size, JSON,
 * depth, object), then only `policy` is an action, with `source` and `rollout` (an integer
 * 1 .. 2^53-1) required. Returns { action, source, epoch, timestamp, rollout } or { malformed }.
 */
export function decodePolicy(payload) {
  const [malformed, m] = parseObject(payload);
  if (malformed) return malformed;
  const action = m.action;
  if (typeof action === 'string' && action !== 'policy') return bad('unknown-action');
  if (typeof action !== 'string') return BAD_FIELD;
  const origin = originOf(m);
  if (origin === null || !int(m.rollout, 1, MAX_SAFE)) return BAD_FIELD;
  return { action, ...origin, rollout: m.rollout };
}

/** Encodes this sender's messages. `seq` numbering is the caller's. */
export class Sender {
  constructor(source, epoch) {
    this.source = source;
    this.epoch = epoch;
    // The constant tail of every message, serialised once.
    this.tail = `,"source":${JSON.stringify(source)},"epoch":${JSON.stringify(epoch)},"v":2}`;
  }

  static now() {
    return Date.now() / 1000;
  }

  invalidate(keys, strategy, seq) {
    return `{"action":"invalidate","keys":${JSON.stringify(keys)},"strategy":"${strategy}","timestamp":${Sender.now()},"seq":${seq}${this.tail}`;
  }

  /** invalidate([key], ...) without the array. */
  invalidateOne(key, strategy, seq) {
    return `{"action":"invalidate","keys":[${JSON.stringify(key)}],"strategy":"${strategy}","timestamp":${Sender.now()},"seq":${seq}${this.tail}`;
  }

  flush(seq) {
    return `{"action":"flush","strategy":"batched","timestamp":${Sender.now()},"seq":${seq}${this.tail}`;
  }

  mark(invalSeq) {
    return `{"action":"mark","inval_seq":${invalSeq},"timestamp":${Sender.now()}${this.tail}`;
  }

  strategyUpdate(strategy, writeRate, invalSeq) {
    const rate = Number.isFinite(writeRate) && writeRate > 0 ? writeRate : 0;
    return `{"action":"strategy_update","strategy":"${strategy}","write_rate":${rate},"timestamp":${Sender.now()},"inval_seq":${invalSeq}${this.tail}`;
  }

  writeReport(count, invalSeq) {
    const n = Math.min(Math.max(0, Math.floor(count)), MAX_U32);
    return `{"action":"write_report","count":${n},"timestamp":${Sender.now()},"inval_seq":${invalSeq}${this.tail}`;
  }

  heartbeat() {
    return `{"action":"heartbeat","timestamp":${Sender.now()}${this.tail}`;
  }

  /** A rollout announcement on P:policy (docs/WIRE.md 9.3). */
  policy(rollout) {
    return `{"action":"policy","rollout":${rollout},"timestamp":${Sender.now()}${this.tail}`;
  }
}

export const OK = 'ok';
export const LOST = 'lost';
export const REORDER_ALLOWANCE_MS = 250;
const MAX_SOURCES = 4096;
const WINDOW = 64n;
const ALL = (1n << 64n) - 1n;

/**
 * The reference loss detector of docs/WIRE.md section 4. One 64-bit window per source (a
 * BigInt: this runs once per received message, never on the read path).
 */
export class LossDetector {
  #sources = new Map(); // source -> { epoch, max, received: bigint, holeSince: number|null, lastHeard }

  get size() {
    return this.#sources.size;
  }

  message(source, epoch, seq, now) {
    return this.#see(source, epoch, seq, now, true);
  }

  position(source, epoch, invalSeq, now) {
    return this.#see(source, epoch, invalSeq, now, false);
  }

  #see(source, epoch, seq, now, isMessage) {
    let s = this.#sources.get(source);
    if (s === undefined) {
      if (this.#sources.size >= MAX_SOURCES) this.#forgetOldest();
      this.#sources.set(source, { epoch, max: seq, received: ALL, holeSince: null, lastHeard: now });
      return OK;
    }
    // Map order is the order of last hearing: move this source to the end.
    this.#sources.delete(source);
    this.#sources.set(source, s);
    s.lastHeard = now;
    if (s.epoch !== epoch) {
      s.epoch = epoch;
      s.max = seq;
      s.received = 1n;
      s.holeSince = null;
      return this.#lost();
    }
    if (seq > s.max) {
      const d = seq - s.max;
      if (d >= 64) {
        s.max = seq;
        s.received = 1n;
        s.holeSince = null;
        return this.#lost();
      }
      s.received = (s.received << BigInt(d)) & ALL;
      s.max = seq;
      if (isMessage) s.received |= 1n;
    } else {
      const d = s.max - seq;
      if (d >= 64) return OK;
      if (isMessage) s.received |= 1n << BigInt(d);
    }
    if (hasHole(s)) {
      if (s.holeSince === null) s.holeSince = now;
    } else {
      s.holeSince = null;
    }
    return OK;
  }

  tick(now) {
    for (const s of this.#sources.values()) {
      if (s.holeSince !== null && now - s.holeSince >= REORDER_ALLOWANCE_MS) return this.#lost();
    }
    return OK;
  }

  // The host flushes L1 on every loss, so the detector itself forgets every pending hole.
  #lost() {
    this.fillHoles();
    return LOST;
  }

  /** After a loss: L1 is empty, so every pending hole is moot. */
  fillHoles() {
    for (const s of this.#sources.values()) {
      s.received = ALL;
      s.holeSince = null;
    }
  }

  resubscribed() {
    this.#sources.clear();
  }

  #forgetOldest() {
    for (const k of this.#sources.keys()) {
      this.#sources.delete(k);
      return;
    }
  }
}

// Bits for seqs 1..max within the window: bit i is seq max - i, so seqs >= 1 are bits
// 0..min(63, max - 1).
function hasHole(s) {
  if (s.max < 1) return false;
  const n = s.max >= 64 ? WINDOW : BigInt(s.max);
  const mask = n === WINDOW ? ALL : (1n << n) - 1n;
  return (s.received & mask) !== mask;
}
