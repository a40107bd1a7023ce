// The cache's own write connection (option `ownWriteConnection`): eager writes (SET + PUBLISH)
// and deletes (DEL + PUBLISH) go out as plain commands in one socket write and their replies are
// read by the small RESP2 parser below, instead of through the user's ioredis client. Measured
// (README "Eager writes"): ioredis spends per command a Command object, a promise, its
// parser's callbacks and its queue, which for two commands costs more than the script that
// replaced them; here two commands cost about one ioredis command. The Go host does the same
// (go/acicache/wconn.go), whose rules this follows:
//   - one connection, dialled like the user's client (host/port or path, family, TLS, AUTH with
//     username and password, CLIENT SETNAME, SELECT of the client's current db); calls are
//     pipelined on it, replies taken in order from a FIFO;
//   - every call has the client's commandTimeout; after a timeout, a transport error or a reply
//     that makes no sense the connection is closed, never reused, and every call on it fails;
//   - a call written to a connection that had been idle, failing at the transport before any
//     reply came on it (the server closed the idle connection: its timeout, CLIENT KILL, a
//     restart), is sent once more on a fresh connection (SET and PUBLISH twice are harmless:
//     same value, same seq);
//   - a failed dial (or handshake) rejects its calls with `notSent` set, so the caller sends
//     them through the user's client, and so does every call for the next second.
// Which clients it stands in for is decided by ownWriterFor (standalone, nothing it cannot
// reproduce); what goes through it by the cache (cache.js). With `ownSubscription` the cache's
// subscription rides the same connection in RESP3 (OwnSubscriber, below; the parser reads the
// RESP3 types too).

import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { EventEmitter } from 'node:events';
import { ReplyError } from 'ioredis';

const DOWN_MS = 1000;
const INCOMPLETE = Symbol('incomplete');
const MESSAGE = Buffer.from('message');

/**
 * The writer for an ioredis client, or null when its writes must stay with ioredis: a Cluster,
 * Sentinel, a custom Connector, a keyPrefix (ioredis rewrites keys), auto-pipelining, or
 * credentials that are not plain strings.
 */
export function ownWriterFor(redis) {
  const o = redis?.options;
  if (!o || typeof o !== 'object' || redis.isCluster === true) return null;
  if (o.sentinels || o.Connector || o.natMap || o.enableAutoPipelining || o.readOnly) return null;
  if (o.keyPrefix) return null;
  if (redis.connector && redis.connector.constructor?.name !== 'StandaloneConnector') return null;
  for (const k of ['username', 'password', 'connectionName']) {
    if (o[k] != null && typeof o[k] !== 'string') return null;
  }
  if (!o.path && (o.port == null || o.host == null)) return null;
  if (o.tls != null && o.tls !== false && typeof o.tls !== 'object') return null;
  return new OwnWriter(o);
}

export class OwnWriter {
  #o;
  #conn = null;
  #downUntil = 0;
  #closed = false;
  #sub = null; // the OwnSubscriber on this writer's connections (ownSubscription), or null
  #db = 0; // the db of the last call: a connection dialled for the subscription uses it
  resp3 = false; // connections say HELLO 3 (the subscription's pushes share them)
  dials = 0;
  writes = 0;

  constructor(o) {
    this.#o = o;
  }

  /**
   * The subscriber facade over this writer's connection (RESP3 from now on), dialling it now.
   * See OwnSubscriber.
   */
  subscriber(db) {
    if (this.#sub === null) {
      this.resp3 = true;
      this.#db = db;
      this.#sub = new OwnSubscriber(this);
      // A connection dialled before (warm, a write) speaks RESP2: replaced.
      const c = this.#conn;
      if (c !== null && !c.resp3) this._retire(c);
      this._dialForSub();
    }
    return this.#sub;
  }

  get closed() {
    return this.#closed;
  }

  // From the subscriber: a connection is wanted (none, or the one there is dead).
  _dialForSub() {
    if (this.#closed) return;
    const c = this.#conn;
    if (c === null || c.dead) this.#connect(this.#db);
  }

  // From the subscriber: SUBSCRIBE / UNSUBSCRIBE `chans` on the current connection (dialled if
  // there is none); resolves with the last ack's count. Never sent twice (a fresh connection
  // is subscribed afresh after its 'ready').
  _subCall(cmd, chans) {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(connectionClosed());
        return;
      }
      const req = {
        payload: encode([cmd, ...chans]), n: chans.length, want: -1, got: 0, value: undefined, err: null,
        resolve, reject, deadline: 0, retried: true, run: 0, sub: cmd.toLowerCase(),
      };
      let c = this.#conn;
      if (c === null || c.dead) c = this.#connect(this.#db);
      c.submit(req);
    });
  }

  // From a Conn: its handshake is done.
  _ready(c) {
    if (this.#conn === c) this.#sub?._ready(c);
  }

  // From the subscriber: `c` is given up (its calls are answered first); the next call dials.
  _retire(c) {
    if (this.#conn === c) this.#conn = null;
    this.#sub?._lost(c, null);
    if (!c.dead) c.retire();
  }

  // From a Conn: a message pushed to it.
  _message(c, channel, payload) {
    this.#sub?._message(c, channel, payload);
  }

  /** Whether a call may be made now (not closed, no failed dial within the last second). */
  get usable() {
    return !this.#closed && (this.#downUntil === 0 || performance.now() >= this.#downUntil);
  }

  /** Calls written or waiting on the connection and not answered yet. */
  get pending() {
    const c = this.#conn;
    return c === null ? 0 : c.outstanding();
  }

  /** Dials now (the first write then finds the connection ready); errors only count as a down. */
  warm(db) {
    if (this.#conn === null && this.usable) this.#connect(db);
  }

  /**
   * Sends `payload` (n commands, RESP-encoded) in one write; resolves with the reply at index
   * `want` (-1: none), or rejects with the first error reply once all n are read, or with the
   * connection's error. `db`: the client's current db (a connection on another one is replaced).
   */
  send(payload, n, want, db) {
    return new Promise((resolve, reject) => {
      const req = { payload, n, want, got: 0, value: undefined, err: null, resolve, reject, deadline: 0, retried: false, run: 0 };
      this.#submit(req, db);
    });
  }

  #submit(req, db) {
    this.#db = db;
    let c = this.#conn;
    if (c !== null && (c.dead || c.db !== db)) {
      if (!c.dead) {
        this.#conn = null;
        this.#sub?._lost(c, null);
        c.retire();
      }
      c = null;
    }
    if (c === null) c = this.#connect(db);
    c.submit(req);
  }

  #connect(db) {
    const c = new Conn(this, this.#o, db, this.resp3);
    this.#conn = c;
    this.dials++;
    return c;
  }

  // From a Conn: it is gone; `retry` are calls to send once more on a fresh one.
  _gone(c, retry, err) {
    if (this.#conn === c) this.#conn = null;
    if (err?.noResp3 === true && this.resp3) {
      // The server has no RESP3 (Redis < 6): writes go on in RESP2 (at once: the next dial
      // would work), the subscription elsewhere.
      this.resp3 = false;
      this.#downUntil = 0;
      const sub = this.#sub;
      this.#sub = null;
      sub?._noResp3(err);
    }
    this.#sub?._lost(c, err);
    if (retry.length === 0) return;
    if (this.#closed) {
      for (const r of retry) r.reject(connectionClosed());
      return;
    }
    for (const r of retry) {
      r.retried = true;
      r.got = 0;
      r.err = null;
      this.#submit(r, c.db);
    }
  }

  _down() {
    this.#downUntil = performance.now() + DOWN_MS;
  }

  /** Closes the connection once the calls on it are answered (at most `ms`). */
  close(ms) {
    this.#closed = true;
    const c = this.#conn;
    this.#conn = null;
    if (c !== null) this.#sub?._lost(c, null);
    return c === null ? Promise.resolve() : c.drainAndClose(ms);
  }
}

// One socket and the calls on it.
class Conn {
  #w;
  #o;
  db;
  dead = false;
  #sock;
  #ready = false;
  #waiting = []; // calls not written yet (dial and handshake under way)
  #pending = []; // calls written, in order
  #head = 0;
  #rbuf = null;
  #timer = null;
  #timeout;
  #answered = 0; // exchanges completed: a connection with some was reused when idle
  #run = 0; // bumped when a call is written to an idle connection
  #runReused = false;
  #runReplies = 0;
  #closing = null;
  #resp3;
  #msgs = null; // messages of the last reads, handed to the subscriber after them (#deliver)

  constructor(w, o, db, resp3) {
    this.#w = w;
    this.#o = o;
    this.db = db;
    this.#resp3 = resp3;
    this.#timeout = o.commandTimeout > 0 ? o.commandTimeout : 0;
    const opts = o.path ? { path: o.path } : { host: o.host, port: o.port, family: o.family || undefined };
    let sock;
    try {
      sock = o.tls ? tls.connect({ ...opts, ...o.tls }) : net.createConnection(opts);
    } catch (err) {
      // Reported after the caller has queued its call.
      queueMicrotask(() => this.#fail(err, true));
      this.#sock = null;
      return;
    }
    this.#sock = sock;
    if (o.noDelay !== false) sock.setNoDelay(true);
    if (o.keepAlive > 0) sock.setKeepAlive(true, o.keepAlive);
    const ct = o.connectTimeout > 0 ? o.connectTimeout : 10_000;
    sock.setTimeout(ct, () => this.#fail(new Error('connect ETIMEDOUT'), true));
    sock.once(o.tls ? 'secureConnect' : 'connect', this.#onConnect);
    sock.on('data', this.#onData);
    sock.on('error', (err) => this.#fail(err, !this.#ready));
    sock.on('close', () => this.#fail(connectionClosed(), !this.#ready));
  }

  get resp3() {
    return this.#resp3;
  }

  outstanding() {
    return this.#waiting.length + this.#pending.length - this.#head;
  }

  #onConnect = () => {
    const o = this.#o;
    const parts = [];
    const hs = [];
    if (o.password) {
      parts.push(o.username ? encode(['AUTH', o.username, o.password]) : encode(['AUTH', o.password]));
      hs.push('auth');
    }
    if (this.#resp3) {
      // After AUTH: a server that wants a password refuses HELLO before it.
      parts.push('*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n');
      hs.push('hello');
    }
    if (o.connectionName) {
      parts.push(encode(['CLIENT', 'SETNAME', o.connectionName]));
      hs.push('setname');
    }
    if (this.db) {
      parts.push(encode(['SELECT', String(this.db)]));
      hs.push('select');
    }
    if (parts.length === 0) {
      // A server that takes the connection and drops it (maxclients, a proxy) fails the dial,
      // not the first write.
      parts.push('*1\r\n$4\r\nPING\r\n');
      hs.push('ping');
    }
    // The handshake is the first call; its replies are judged one by one (#reply).
    const req = {
      payload: parts.join(''), n: parts.length, want: -1, got: 0, value: undefined, err: null, deadline: 0, retried: true, run: 0,
      hs,
      resolve: () => this.#handshaken(),
      reject: (err) => this.#fail(err, true),
    };
    this.#write(req);
  };

  #handshaken() {
    if (this.dead) return;
    this.#ready = true;
    this.#sock.setTimeout(0);
    const w = this.#waiting;
    this.#waiting = [];
    if (w.length === 1) this.#write(w[0]);
    else if (w.length > 1) this.#writeMany(w);
    if (this.#closing && this.outstanding() === 0) this.#closing();
    this.#w._ready(this);
  }

  submit(req) {
    if (!this.#ready) {
      this.#waiting.push(req);
      return;
    }
    this.#write(req);
  }

  #startRun() {
    if (this.#pending.length === this.#head) {
      this.#run++;
      this.#runReused = this.#answered > 0;
      this.#runReplies = 0;
    }
  }

  #write(req) {
    this.#startRun();
    req.run = this.#run;
    if (this.#timeout) req.deadline = performance.now() + this.#timeout;
    this.#pending.push(req);
    this.#sock.write(req.payload);
    if (this.#timeout && this.#timer === null) this.#arm();
  }

  #writeMany(reqs) {
    this.#startRun();
    const deadline = this.#timeout ? performance.now() + this.#timeout : 0;
    const chunks = [];
    for (const r of reqs) {
      r.run = this.#run;
      r.deadline = deadline;
      this.#pending.push(r);
      chunks.push(typeof r.payload === 'string' ? Buffer.from(r.payload) : r.payload);
    }
    this.#sock.write(Buffer.concat(chunks));
    if (this.#timeout && this.#timer === null) this.#arm();
  }

  // One timer for the oldest call, re-armed for the next when it is answered in time.
  #arm() {
    const head = this.#pending[this.#head];
    if (head === undefined) return;
    this.#timer = setTimeout(this.#onTimer, Math.max(1, head.deadline - performance.now()));
  }

  #onTimer = () => {
    this.#timer = null;
    const head = this.#pending[this.#head];
    if (head === undefined || this.dead) return;
    if (performance.now() >= head.deadline) {
      this.#fail(new Error('Command timed out'), false, true);
      return;
    }
    this.#arm();
  };

  #onData = (chunk) => {
    let b = this.#rbuf === null ? chunk : Buffer.concat([this.#rbuf, chunk]);
    let i = 0;
    const len = b.length;
    while (i < len && !this.dead) {
      let v;
      const push = b[i] === 62; // '>': RESP3 out-of-band data, never a reply
      try {
        v = parse(b, i, push);
      } catch (err) {
        this.#fail(err, false, true);
        return;
      }
      if (v === INCOMPLETE) break;
      i = at;
      if (push) this.#push(v);
      else this.#reply(v);
    }
    if (this.dead) return;
    this.#rbuf = i < len ? b.subarray(i) : null;
  };

  #reply(v) {
    const req = this.#pending[this.#head];
    if (req === undefined) {
      this.#fail(new Error('aci-cache: a reply nobody asked for on the write connection'), false, true);
      return;
    }
    this.#runReplies++;
    if (req.sub !== undefined) {
      // SUBSCRIBE / UNSUBSCRIBE are answered by pushes; a reply is the command refused whole.
      if (!(v instanceof Error)) {
        this.#fail(new Error(`aci-cache: a reply to ${req.sub.toUpperCase()} that is not an error`), false, true);
        return;
      }
      req.err = v;
      req.got = req.n;
      this.#done(req);
      return;
    }
    const k = req.got++;
    if (v instanceof Error) {
      // AUTH with a password the server does not need: ioredis warns and goes on; so do we.
      const benign = req.hs !== undefined && (req.hs[k] === 'setname' ||
        (req.hs[k] === 'auth' && /no password is set|without any password configured/.test(v.message)));
      if (!benign && req.err === null) {
        req.err = v;
        if (req.hs !== undefined && req.hs[k] === 'hello' && /unknown command|unknown subcommand|NOPROTO/i.test(v.message)) v.noResp3 = true;
      }
    } else if (k === req.want) {
      req.value = v;
    }
    if (req.got < req.n) return;
    this.#done(req);
  }

  // A push: a message for the subscriber, or an ack of the SUBSCRIBE / UNSUBSCRIBE at the head
  // (Redis sends them in the order the commands came, before the replies of later ones). A
  // message may come before or after the reply of the command that published it (Redis 7.0
  // writes it before the reply, Valkey 8.1 after): a message never touches the calls, so
  // either order is the same here.
  #push(v) {
    if (!Array.isArray(v) || v.length < 1 || !Buffer.isBuffer(v[0])) {
      this.#fail(new Error('aci-cache: a malformed push on the write connection'), false, true);
      return;
    }
    const k = v[0];
    if (k.length === 7 && v.length === 3 && k.equals(MESSAGE)) {
      if (!Buffer.isBuffer(v[1]) || !Buffer.isBuffer(v[2])) return;
      if (this.#msgs === null) {
        this.#msgs = [];
        setImmediate(this.#deliver);
      }
      this.#msgs.push(v[1], v[2]);
      return;
    }
    // What came before an ack is handed over before the ack answers its call.
    if (this.#msgs !== null) this.#deliver();
    const kind = k.toString('latin1');
    const req = this.#pending[this.#head];
    if (req === undefined || req.sub !== kind) return; // an ack nobody waits for, or other push data
    this.#runReplies++;
    req.value = typeof v[2] === 'number' ? v[2] : req.value;
    if (++req.got < req.n) return;
    this.#done(req);
  }

  // Messages are handed to the subscriber once the event loop has run what the read's replies
  // resumed, not before: handled in the read (Redis 7.0 sends a message published by this
  // connection's own call before the call's reply), the subscriber's work sat between the reply
  // and the next write (README "Eager writes": 1.07-1.09x a SET inline, 0.94-1.07x deferred).
  // Deferred, it overlaps with Redis working on the next command, as a separate subscriber's
  // read did; messages keep their order, and wait only for that JavaScript.
  #deliver = () => {
    const m = this.#msgs;
    if (m === null) return;
    this.#msgs = null;
    for (let j = 0; j < m.length; j += 2) this.#w._message(this, m[j], m[j + 1]);
  };

  #done(req) {
    this.#pending[this.#head++] = undefined;
    if (this.#head === this.#pending.length) {
      this.#pending.length = 0;
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#pending.length) {
      this.#pending = this.#pending.slice(this.#head);
      this.#head = 0;
    }
    this.#answered++;
    if (this.#timer !== null && this.#head === this.#pending.length) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (req.err !== null) req.reject(req.err);
    else req.resolve(req.value);
    if (this.#closing && this.outstanding() === 0) this.#closing();
  }

  // The connection is done for: every call on it fails. `dial`: it never got ready (the calls
  // were not sent: the caller may send them elsewhere). `noRetry`: a timeout or a protocol
  // error, which says nothing about an idle connection closed by the server.
  #fail(err, dial, noRetry = false) {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#sock?.destroy();
    const waiting = this.#waiting;
    const pending = this.#pending.slice(this.#head);
    this.#waiting = [];
    this.#pending = [];
    this.#head = 0;
    const retry = [];
    if (dial) {
      this.#w._down();
      for (const r of [...pending, ...waiting]) {
        if (r.hs !== undefined) continue;
        if (r.retried) {
          r.reject(err);
        } else {
          const e = new Error(`aci-cache: the write connection could not be opened: ${err?.message ?? err}`);
          e.cause = err;
          e.notSent = true;
          r.reject(e);
        }
      }
    } else {
      const idleClosed = !noRetry && this.#runReused && this.#runReplies === 0;
      for (const r of pending) {
        if (idleClosed && !r.retried && r.run === this.#run) retry.push(r);
        else r.reject(err);
      }
      // Not written (only while connecting, which is the `dial` case): none here.
      for (const r of waiting) retry.push(r);
    }
    this.#w._gone(this, retry, err);
    if (this.#closing) this.#closing();
  }

  // Replaced (another db): its calls are answered, then it closes.
  retire() {
    this.drainAndClose(this.#o.commandTimeout > 0 ? this.#o.commandTimeout : 10_000);
  }

  drainAndClose(ms) {
    return new Promise((resolve) => {
      let timer = null;
      const done = () => {
        clearTimeout(timer);
        this.#closing = null;
        if (!this.dead) {
          this.dead = true;
          this.#sock?.destroy();
          this.#w._gone(this, [], null);
          // Calls left when the bound ran out: those not written yet go through the client.
          const waiting = this.#waiting;
          const pending = this.#pending.slice(this.#head);
          this.#waiting = [];
          this.#pending = [];
          clearTimeout(this.#timer);
          for (const r of pending) if (r.hs === undefined) r.reject(connectionClosed());
          for (const r of waiting) {
            const e = connectionClosed();
            e.notSent = !r.retried;
            r.reject(e);
          }
        }
        resolve();
      };
      this.#closing = done;
      if (this.dead || this.outstanding() === 0) {
        done();
        return;
      }
      timer = setTimeout(done, ms);
    });
  }
}

// ---- the subscription on the write connection (ownSubscription) --------------------------------

// Own messages came back to the cache on a separate subscriber connection: for each, Redis wrote
// to a second socket and Node woke up, parsed and emitted once more (bench/own-floors.js:
// 1.12-1.22x an ioredis SET for a write and its copy, against 0.86-0.94x with the copy pushed on
// the writing connection itself, in the read that brings the reply). So the subscription can
// ride the write connection, in RESP3 (pushes, not RESP2's subscribed mode, which refuses other
// commands). This facade offers the part of an ioredis subscriber the cache uses ('messageBuffer',
// 'close', 'ready', 'error'; subscribe, unsubscribe, status, stream, disconnect), so the cache's
// subscription rules (docs/WIRE.md 5: L1 suspended while down, resubscribe with backoff and
// flush, liveness, lag, loss) run unchanged. The connection is the writer's: whichever
// connection the writer has becomes the subscription's once its handshake is done ('ready'); when
// it goes (transport error, timeout, CLIENT KILL, a db change, stop) the subscription goes with
// it ('close'), and a new one is dialled with capped exponential backoff and jitter, as the
// ioredis subscriber's retryStrategy does, unless a write dialled one first.
export class OwnSubscriber extends EventEmitter {
  #w;
  #conn = null; // the connection subscribed on (its handshake done), or null
  #times = 0;
  #timer = null;
  #closed = false;
  status = 'connecting';

  constructor(w) {
    super();
    this.#w = w;
  }

  /** Never pausable (ownBatchDelay): the replies of writes come on the same socket. */
  get stream() {
    return null;
  }

  subscribe(...chans) {
    if (this.#closed) return Promise.reject(connectionClosed());
    return this.#w._subCall('SUBSCRIBE', chans);
  }

  unsubscribe(...chans) {
    if (this.#closed) return Promise.reject(connectionClosed());
    return this.#w._subCall('UNSUBSCRIBE', chans);
  }

  /**
   * Gives up the subscription's connection (the writes' calls on it are answered first, bounded
   * by commandTimeout); `reconnect`: dial a new one (with backoff), else stop for good.
   */
  disconnect(reconnect = false) {
    if (!reconnect) {
      this.#closed = true;
      clearTimeout(this.#timer);
      this.#timer = null;
      this.status = 'end';
    }
    const c = this.#conn;
    if (c !== null) this.#w._retire(c);
    else this.#schedule();
  }

  _ready(c) {
    if (this.#closed || c.dead || !c.resp3) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#times = 0;
    this.#conn = c;
    this.status = 'ready';
    this.emit('ready');
  }

  _message(c, channel, payload) {
    // A connection being retired still answers its calls: its pushes are no longer ours.
    if (c === this.#conn) this.emit('messageBuffer', channel, payload);
  }

  _lost(c, err) {
    if (c === this.#conn) {
      this.#conn = null;
      this.status = this.#closed ? 'end' : 'reconnecting';
      this.emit('close');
    }
    if (err != null && !this.#closed && this.listenerCount('error') > 0) this.emit('error', err);
    this.#schedule();
  }

  _noResp3(err) {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.status = 'end';
    this.emit('resp2', err);
  }

  #schedule() {
    if (this.#closed || this.#timer !== null || this.#conn !== null || this.#w.closed) return;
    const wait = Math.min(5000, 50 * 2 ** Math.min(this.#times, 10));
    this.#times++;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.#closed || this.#conn !== null) return;
      this.#w._dialForSub();
      // Until a connection is ready (or fails, which schedules again): keep trying.
      this.#schedule();
    }, wait * (0.5 + Math.random() / 2));
    this.#timer.unref?.();
  }
}

function connectionClosed() {
  return new Error('Connection is closed.');
}

// ---- RESP2 -----------------------------------------------------------------------------------

/** One command as RESP: a string when every argument is one, else a Buffer. */
export function encode(args) {
  let s = `*${args.length}\r\n`;
  let bufs = null;
  for (const a of args) {
    if (typeof a === 'string') {
      s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
    } else {
      (bufs ??= []).push(Buffer.from(s), Buffer.from(`$${a.length}\r\n`), a);
      s = '\r\n';
    }
  }
  if (bufs === null) return s;
  bufs.push(Buffer.from(s));
  return Buffer.concat(bufs);
}

/** Commands encoded by encode() as one payload. */
export function join(parts) {
  if (parts.every((p) => typeof p === 'string')) return parts.join('');
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
}

// The end of the reply parse() read last (a module variable: no object per reply).
let at = 0;

// One reply at b[i..]: +OK as 'OK', integers as numbers, errors as ReplyError, bulk strings
// as strings (as Buffers with `bufs`: a push's), arrays, sets and pushes as arrays, maps as
// arrays of key, value, ..., null as null, booleans, doubles as numbers, verbatim strings
// without their format; INCOMPLETE when b ends first. Throws on anything else (RESP2 and the
// RESP3 types HELLO 3 allows; attributes are read and dropped).
function parse(b, i, bufs = false) {
  const len = b.length;
  if (i >= len) return INCOMPLETE;
  const e = b.indexOf(10, i);
  if (e < 0) return INCOMPLETE;
  if (e - i < 2 || b[e - 1] !== 13) throw new Error('aci-cache: a malformed reply on the write connection');
  const t = b[i];
  switch (t) {
    case 43: // +
      at = e + 1;
      return e - i === 4 && b[i + 1] === 79 && b[i + 2] === 75 ? 'OK' : b.toString('utf8', i + 1, e - 1);
    case 45: // -
      at = e + 1;
      return new ReplyError(b.toString('utf8', i + 1, e - 1));
    case 58: // :
      at = e + 1;
      return int(b, i + 1, e - 1);
    case 36: // $
    case 33: // ! blob error
    case 61: { // = verbatim
      const n = int(b, i + 1, e - 1);
      if (n < 0) {
        at = e + 1;
        return null;
      }
      const end = e + 1 + n;
      if (end + 2 > len) return INCOMPLETE;
      if (b[end] !== 13 || b[end + 1] !== 10) throw new Error('aci-cache: a malformed reply on the write connection');
      at = end + 2;
      if (t === 33) return new ReplyError(b.toString('utf8', e + 1, end));
      const from = t === 61 && n >= 4 ? e + 5 : e + 1;
      return bufs ? b.subarray(from, end) : b.toString('utf8', from, end);
    }
    case 42: // *
    case 126: // ~ set
    case 62: // > push
    case 37: { // % map: key, value, ... in one array
      let n = int(b, i + 1, e - 1);
      if (n < 0) {
        at = e + 1;
        return null;
      }
      if (t === 37) n *= 2;
      const out = new Array(n);
      let j = e + 1;
      for (let k = 0; k < n; k++) {
        const v = parse(b, j, bufs);
        if (v === INCOMPLETE) return INCOMPLETE;
        out[k] = v;
        j = at;
      }
      at = j;
      return out;
    }
    case 95: // _ null
      at = e + 1;
      return null;
    case 35: // # boolean
      at = e + 1;
      return b[i + 1] === 116; // t
    case 44: // , double
    case 40: { // ( big number
      at = e + 1;
      const s = b.toString('latin1', i + 1, e - 1);
      const v = t === 44 ? Number(s.replace(/^(-?)inf$/, '$1Infinity')) : s;
      if (t === 44 && Number.isNaN(v) && s !== 'nan') throw new Error('aci-cache: a malformed double on the write connection');
      return v;
    }
    case 124: { // | attribute: a map that precedes the reply it describes
      const n = int(b, i + 1, e - 1) * 2;
      let j = e + 1;
      for (let k = 0; k < n; k++) {
        if (parse(b, j, bufs) === INCOMPLETE) return INCOMPLETE;
        j = at;
      }
      return parse(b, j, bufs);
    }
    default:
      throw new Error(`aci-cache: an unexpected reply type ${JSON.stringify(String.fromCharCode(t))} on the write connection`);
  }
}

function int(b, s, e) {
  let neg = false;
  if (b[s] === 45) {
    neg = true;
    s++;
  }
  if (s >= e) throw new Error('aci-cache: a malformed integer on the write connection');
  let v = 0;
  for (let k = s; k < e; k++) {
    const d = b[k] - 48;
    if (d < 0 || d > 9) throw new Error('aci-cache: a malformed integer on the write connection');
    v = v * 10 + d;
  }
  return neg ? -v : v;
}

// ---- the cache's commands --------------------------------------------------------------------

/** `PUBLISH channel ` up to the message: constant per channel. */
export function publishHead(channel) {
  return `*3\r\n$7\r\nPUBLISH\r\n$${Buffer.byteLength(channel)}\r\n${channel}\r\n`;
}

/** PUBLISH of `msg` (a string) on the channel of `head`. */
export function publish(head, msg) {
  return `${head}$${Buffer.byteLength(msg)}\r\n${msg}\r\n`;
}

/** SET key value PX ms; `value` a string or a Buffer. */
export function setPX(key, value, ms) {
  const t = String(ms);
  const tail = `\r\n$2\r\nPX\r\n$${t.length}\r\n${t}\r\n`;
  if (typeof value === 'string') {
    return `*5\r\n$3\r\nSET\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n$${Buffer.byteLength(value)}\r\n${value}${tail}`;
  }
  return Buffer.concat([Buffer.from(`*5\r\n$3\r\nSET\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n$${value.length}\r\n`), value, Buffer.from(tail)]);
}

export function del(key) {
  return `*2\r\n$3\r\nDEL\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n`;
}

/**
 * The head of `EVALSHA sha 1` and the tail argument `channel` of the eager script call
 * (constant per cache), for evalSetPublish.
 */
export function scriptParts(sha, channel) {
  return { head: `*8\r\n$7\r\nEVALSHA\r\n$${sha.length}\r\n${sha}\r\n$1\r\n1\r\n`, chan: `$${Buffer.byteLength(channel)}\r\n${channel}\r\n` };
}

/** EVALSHA sha 1 key value ms channel msg (the script of SET PX + PUBLISH). */
export function evalSetPublish(parts, key, value, ms, msg) {
  const t = String(ms);
  const tail = `\r\n$${t.length}\r\n${t}\r\n${parts.chan}$${Buffer.byteLength(msg)}\r\n${msg}\r\n`;
  if (typeof value === 'string') {
    return `${parts.head}$${Buffer.byteLength(key)}\r\n${key}\r\n$${Buffer.byteLength(value)}\r\n${value}${tail}`;
  }
  return Buffer.concat([Buffer.from(`${parts.head}$${Buffer.byteLength(key)}\r\n${key}\r\n$${value.length}\r\n`), value, Buffer.from(tail)]);
}
