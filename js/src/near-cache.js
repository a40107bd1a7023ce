// The near cache (L1): a bounded in-process copy of Redis values, keyed by the user key (so a
// hit does not even build the namespaced Redis key).
//
// Rules that make it safe to serve from (the same as the Rust host's):
// - every entry carries a deadline never later than the key's Redis TTL (PTTL read in the same
//   pipeline as the value, counted from when the request was sent);
// - flush is O(1): the map is replaced and the generation bumped, so a fill that started before
//   the flush cannot install afterwards;
// - a fill never installs a value older than an invalidation or a local write of the same key
//   that raced it: each in-flight fill is a record that invalidate() and putOwn() mark dead;
// - nothing is served while `serving` is false (subscription down or lagging).
//
// Store: a plain Map in insertion order with CLOCK (second-chance) eviction. A hit only sets a
// flag on the entry; eviction moves flagged entries to the back once. Measured against
// lru-cache 11 (bench/l1-store.js): the Map is ~2-3x cheaper per hit, because lru-cache moves
// the entry to the head of its list on every get and checks its own TTL bookkeeping, while the
// byte budget and per-entry deadline we need are a few lines here.

/** Bytes charged per entry beyond key and value: the Map slot and the entry object. */
export const ENTRY_OVERHEAD = 96;

export class NearCache {
  /** @type {Map<string, {s: string|undefined, b: Buffer|undefined, exp: number, size: number, ref: boolean}>} */
  map = new Map();
  gen = 0;
  bytes = 0;
  serving = false;
  /** In-flight fills by user key: { gen, valid, promise }. */
  inflight = new Map();
  hand = undefined;
  handMap = undefined;

  constructor(maxEntries, maxBytes) {
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes;
    // One value may use at most an eighth of the budget, so one huge value cannot evict
    // everything else.
    this.maxValueBytes = Math.floor(maxBytes / 8);
  }

  /** The live entry of `key`, or undefined. */
  get(key, now) {
    if (!this.serving) return undefined;
    const e = this.map.get(key);
    if (e === undefined) return undefined;
    if (e.exp <= now) {
      this.#remove(key, e);
      return undefined;
    }
    e.ref = true;
    return e;
  }

  /** A fill token for `key`: the running fill started in this generation, if any, else a new one. */
  joinFill(key) {
    const f = this.inflight.get(key);
    return f !== undefined && f.gen === this.gen ? f : undefined;
  }

  beginFill(key) {
    const f = { gen: this.gen, valid: true, promise: null };
    this.inflight.set(key, f);
    return f;
  }

  /** Installs a value read from Redis unless the fill was overtaken. */
  completeFill(f, key, value, deadline, now) {
    if (this.inflight.get(key) === f) this.inflight.delete(key);
    if (!f.valid || f.gen !== this.gen || !this.serving || deadline <= now) return false;
    return this.#install(key, undefined, value, deadline);
  }

  /** The writer's own value (read-your-writes); kills a racing fill of the old value. */
  putOwn(key, str, buf, deadline, now) {
    const f = this.inflight.get(key);
    if (f !== undefined) {
      f.valid = false;
      this.inflight.delete(key);
    }
    const old = this.map.get(key);
    const vlen = buf !== undefined ? buf.length : str.length * 3; // worst-case UTF-8 size
    if (deadline <= now || vlen > this.maxValueBytes) {
      if (old !== undefined) this.#remove(key, old);
      return;
    }
    if (old !== undefined) {
      // Rewritten in place: no allocation, no Map delete + insert (a hole in V8's table).
      const size = key.length * 2 + vlen + ENTRY_OVERHEAD;
      this.bytes += size - old.size;
      old.s = str;
      old.b = buf;
      old.exp = deadline;
      old.size = size;
      if (this.bytes > this.maxBytes) this.#evict(key);
      return;
    }
    this.#install(key, str, buf, deadline);
  }

  invalidate(key) {
    const f = this.inflight.get(key);
    if (f !== undefined) {
      f.valid = false;
      this.inflight.delete(key);
    }
    const e = this.map.get(key);
    if (e !== undefined) this.#remove(key, e);
  }

  flush() {
    this.gen++;
    this.map = new Map();
    this.bytes = 0;
    // Fills of the old generation can no longer install; new readers must not join them.
    this.inflight = new Map();
  }

  suspend() {
    this.serving = false;
    this.flush();
  }

  resume() {
    this.flush();
    this.serving = true;
  }

  get size() {
    return this.map.size;
  }

  #remove(key, e) {
    this.map.delete(key);
    this.bytes -= e.size;
  }

  #install(key, str, buf, deadline) {
    const vlen = buf !== undefined ? buf.length : str.length * 3; // worst-case UTF-8 size
    if (vlen > this.maxValueBytes) return false;
    const size = key.length * 2 + vlen + ENTRY_OVERHEAD;
    const old = this.map.get(key);
    if (old !== undefined) this.#remove(key, old);
    this.map.set(key, { s: str, b: buf, exp: deadline, size, ref: false });
    this.bytes += size;
    if (this.map.size > this.maxEntries || this.bytes > this.maxBytes) this.#evict(key);
    return true;
  }

  // CLOCK: the entry under the hand goes unless it was read since the hand last passed it; a
  // read one is moved to the back once. The hand is one iterator kept across calls: a fresh
  // iterator would walk over every slot deleted since V8 last compacted the table.
  #evict(keep) {
    const map = this.map;
    if (this.hand === undefined || this.handMap !== map) {
      this.handMap = map;
      this.hand = map.entries();
    }
    let budget = map.size * 2 + 2;
    while ((map.size > this.maxEntries || this.bytes > this.maxBytes) && budget-- > 0) {
      let r = this.hand.next();
      if (r.done) {
        this.hand = map.entries();
        r = this.hand.next();
        if (r.done) return;
      }
      const [k, e] = r.value;
      if (k === keep) continue;
      if (e.ref) {
        e.ref = false;
        continue;
      }
      this.#remove(k, e);
    }
  }
}
