"""AdaptiveCache: the thread-based front end. Only I/O lives here: it runs the programs of
``_core.Core`` (the protocol) over a synchronous redis-py (or fakeredis) client."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, List, Optional

from . import _cluster, _exit
from ._core import Core, FrontEnd, Program, RunningPolicy, log, own_client
from redis.exceptions import RedisError, ResponseError

from ._rawsub import RawSub
from .config import CacheConfig

__all__ = ["AdaptiveCache"]


def _pack(cmds: List[Any], encode: Any) -> bytes:
    """RESP for ``cmds``, each argument through the connection's encoder as redis-py's
    ``pack_commands`` does (same bytes for our single-word commands), in one buffer: redis-py's
    own packing cost ~19 us for an eager write's SET + PUBLISH here, this ~2 us."""
    out: List[Any] = []
    add = out.append
    for cmd in cmds:
        add(b"*%d\r\n" % len(cmd))
        for a in cmd:
            b = a if type(a) is bytes else encode(a)
            add(b"$%d\r\n" % len(b))
            add(b)
            add(b"\r\n")
    return b"".join(out)


class AdaptiveCache(FrontEnd):
    """A near cache over Redis whose fleet-wide invalidation strategy adapts to the write rate.

    ``AdaptiveCache(redis_client, pubsub_client=None, **config)``: ``redis_client`` is a
    ``redis.Redis`` (or ``fakeredis.FakeRedis``); the Pub/Sub connection is taken from
    ``pubsub_client`` when given (a client or a ``PubSub``), else from ``redis_client.pubsub()``.
    ``redis_client`` may also be a ``redis.cluster.RedisCluster``: the cache then uses sharded
    Pub/Sub on the shard of its namespace's channels (``pubsub_client`` is not used) and
    watches the cluster's topology (see docs/WIRE.md, "Redis Cluster").
    Settings: see :class:`CacheConfig` (invalid ones raise ``ValueError`` naming the setting).
    The constructor fails at once (``ConnectionError``) if Redis does not answer.

    Two daemon threads run until :meth:`stop` (called at interpreter exit and on SIGTERM if you
    do not): the tick (policy, batches, heartbeats, lease) and the Pub/Sub reader.
    """

    def __init__(self, redis_client: Any, pubsub_client: Any = None, **config: Any):
        cfg = CacheConfig.from_kwargs(**config)
        self.config = cfg
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._cluster = _cluster.is_cluster(redis_client)
        self._ps_node: Any = None
        self._ps_failed = False
        self._watch: dict = {}
        if self._cluster:
            self._client = _cluster.own_cluster_client(redis_client, cfg.command_timeout, False)
            self._own_pool = None
            self._fast_pool = None
            enc = redis_client.get_encoder()
        else:
            self._client, self._own_pool = own_client(redis_client, cfg.command_timeout, Retry(NoBackoff(), 0))
            cls = getattr(self._own_pool, "connection_class", None)
            self._fast_pool = self._own_pool if cls is not None and cls.__module__ == "redis.connection" else None
            enc = redis_client.get_encoder()
        self._idle: List[Any] = []  # the fast path's connections, clean, of this process
        self._idle_pid = os.getpid()
        self._core = core = Core(cfg, enc, bool(getattr(enc, "decode_responses", False)), self._cluster)
        self._pubsub_src = pubsub_client
        self._ps: Any = None
        self._raw: Optional[RawSub] = None
        self._stop_evt = threading.Event()
        self._wake = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        try:
            self._run(core.op_start())
        except BaseException:
            self._close_own()
            raise
        iid = core.instance_id
        self._ps_thread = threading.Thread(target=self._run, args=(core.sub_loop(),), name=f"aci-pubsub-{iid}",
                                           daemon=True)
        self._tick_thread = threading.Thread(target=self._tick_main, name=f"aci-tick-{iid}", daemon=True)
        self._threads = [self._tick_thread, self._ps_thread]
        if core.rollout is not None:  # fetching and compiling pushed policies: off the tick
            self._threads.append(threading.Thread(target=self._run, args=(core.rollout.loop(),),
                                                  name=f"aci-rollout-{iid}", daemon=True))
        for t in self._threads:
            t.start()
        _exit.register(self)
        if cfg.connect_timeout > 0:
            core.subscribed.wait(cfg.connect_timeout)

    # ------------------------------------------------------------------------------------------
    # running programs

    def _run(self, prog: Program) -> Any:
        """Drive a program: execute each request it yields and send the result back in. Left
        mid-request (an interrupt), the program is closed: it settles what it had in flight."""
        result: Any = None
        error: Optional[BaseException] = None
        try:
            while True:
                try:
                    req = prog.throw(error) if error is not None else prog.send(result)
                except StopIteration as done:
                    return done.value
                error = None
                try:
                    result = getattr(self, "_do_" + req[0])(*req[1:])
                except Exception as e:
                    result, error = None, e
        finally:
            prog.close()

    def _do_cmds(self, cmds: List[Any]) -> List[Any]:
        pool = self._fast_pool
        if pool is not None:
            # One connection, one write, one read per reply: what a pipeline does, without the
            # Pipeline object's cost (a quarter of a SET's time in redis-py). No retry: a failure
            # surfaces within command_timeout, and the connection is dropped, never reused
            # half-read. A connection whose replies were all read goes to our own idle stack
            # rather than back to the pool: the pool's checks on every take (a poll for unread
            # data, its metrics) cost ~14 us, a tenth of an eager write; a connection only comes
            # back here clean, and one from another process is never reused.
            idle = self._idle
            ours = self._idle_pid == os.getpid()
            try:
                conn = idle.pop() if ours else pool.get_connection()
            except IndexError:
                conn = pool.get_connection()
            try:
                conn.send_packed_command((_pack(cmds, conn.encoder.encode),))
                out = []
                err: Optional[Exception] = None
                for _ in cmds:
                    try:
                        out.append(conn.read_response())
                    except ResponseError as e:
                        out.append(e)
                        err = err or e
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            if self._stopped or not ours:
                pool.release(conn)
            else:
                idle.append(conn)
            if err is not None:
                raise err
            return out
        c = self._client
        if self._cluster:
            return self._cluster_cmds(cmds)
        if len(cmds) == 1:
            return [c.execute_command(*cmds[0])]
        pipe = c.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return pipe.execute()

    def _cluster_cmds(self, cmds: List[Any]) -> List[Any]:
        """Runs of commands on one slot, one pipeline each, in order: a SET is acknowledged
        before the SPUBLISH of its invalidation (on another shard) is sent."""
        c = self._client
        out: List[Any] = []
        err: Optional[Exception] = None
        try:
            for run in _cluster.runs(cmds):
                if len(run) == 1:
                    try:
                        if run[0] == ("PING",):  # one node answering is enough to start
                            out.append(c.execute_command("PING", target_nodes=c.get_default_node()))
                        else:
                            out.append(c.execute_command(*run[0]))
                    except ResponseError as e:
                        out.append(e)
                        err = err or e
                    continue
                pipe = c.pipeline(transaction=False)
                for cmd in run:
                    pipe.execute_command(*cmd)
                for r in pipe.execute(raise_on_error=False):
                    out.append(r)
                    if isinstance(r, ResponseError):
                        err = err or r
                    elif isinstance(r, Exception):
                        raise r  # a connection or cluster error: nothing of this run is known
        except (OSError, RedisError) as e:
            if not isinstance(e, ResponseError):
                # A node unreachable or a slot moving: what L1 holds from it may be lost.
                self._core.on_topology(False, None)
            raise
        if err is not None:
            raise err
        return out

    def _do_topology(self) -> Any:
        node = self._ps_node
        c = self._client
        if node is None or c.get_node(node_name=node.name) is None:
            node = c.get_random_node()
        healthy, fp = _cluster.topology(c.execute_command("CLUSTER", "NODES", target_nodes=node))
        # One connection of our own per master, PINGed each tick: a reset means the node crashed
        # or restarted (maybe empty, within the node timeout, which no slot map shows).
        watch = self._watch
        primaries = {n.name: n for n in c.get_primaries()}
        for name in list(watch):
            if name not in primaries:
                watch.pop(name).disconnect()
        for name, n in primaries.items():
            conn = watch.get(name)
            try:
                if conn is None:
                    conn = watch[name] = _cluster.watch_connection(n, c, self.config.command_timeout)
                conn.send_command("PING")
                conn.read_response()
            except Exception:
                healthy = False
                bad = watch.pop(name, None)
                if bad is not None:
                    bad.disconnect()
        return healthy, fp

    def _do_cluster_clear(self, pattern: Optional[str]) -> None:
        c = self._client
        if pattern is None:
            c.execute_command("FLUSHDB", target_nodes=c.get_primaries())
            return
        for node in c.get_primaries():
            r = c.get_redis_connection(node)
            cursor: Any = 0
            while True:
                cursor, keys = r.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                by_slot: dict = {}
                for k in keys:
                    by_slot.setdefault(_cluster.key_slot(k if isinstance(k, bytes) else k.encode()), []).append(k)
                for ks in by_slot.values():
                    c.execute_command("UNLINK", *ks)
                if int(cursor) == 0:
                    break
    def _do_raw(self, cmd: Any) -> Any:
        """One command whose reply comes back undecoded (a component's bytes)."""
        from redis.client import NEVER_DECODE

        return self._client.execute_command(*cmd, **{NEVER_DECODE: True})

    def _do_call(self, fn: Any, args: Any, kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def _do_wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _do_sleep(self, seconds: float) -> None:
        self._stop_evt.wait(seconds)

    def _do_wake(self) -> None:
        self._wake.set()

    def _do_callbacks(self, cbs: List[Any]) -> None:
        for cb, old, new in cbs:
            try:
                cb(old, new)
            except Exception:
                self._core.callback_failed()

    def _do_ps_open(self) -> None:
        if self._cluster:
            # the master of our channels' slot; after a failure the slot map may be stale
            c = self._client
            if self._ps_failed:
                c.nodes_manager.initialize()
            self._ps_failed = True
            node = c.nodes_manager.get_node_from_slot(_cluster.key_slot(self._core.ch_inval.encode()))
            self._ps_node = node
            self._ps = c.get_redis_connection(node).pubsub()
            return
        src = self._pubsub_src
        if src is None:
            ps = self._client.pubsub()
        elif hasattr(src, "get_message") and hasattr(src, "subscribe"):
            src.reset()  # a PubSub object given by the caller: reuse it
            ps = src
        else:
            ps = src.pubsub()
        self._ps = ps

    def _do_ps_sub(self, channels: List[str]) -> None:
        if self._cluster:
            self._ps.ssubscribe(*channels)
        else:
            self._ps.subscribe(*channels)
        if self._raw is None and not self._cluster:
            sock = RawSub.usable(self._ps)
            if sock is not None:
                self._raw = RawSub(sock, self._core.enc.own_prefix_b)
        # A dead link must surface here rather than be retried inside redis-py while messages are
        # lost; the original retry goes back with the connection when it is released.
        conn = getattr(self._ps, "connection", None)
        if conn is not None and hasattr(conn, "retry") and not hasattr(self._ps, "_aci_retry"):
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._ps._aci_retry = conn.retry
            conn.retry = Retry(NoBackoff(), 0)

    def _do_ps_unsub(self, channels: List[str]) -> None:
        if self._cluster:
            self._ps.sunsubscribe(*channels)
        else:
            self._ps.unsubscribe(*channels)

    def _do_ps_get(self, timeout: float) -> Any:
        if self._raw is not None:
            return self._raw.get(timeout)
        msg = self._ps.get_message(timeout=timeout)
        if msg is not None and self._cluster and msg.get("type") == "ssubscribe":
            self._ps_failed = False
        return msg

    def _do_ps_close(self) -> None:
        ps, self._ps = self._ps, None
        self._raw = None
        if ps is None:
            return
        try:
            conn = getattr(ps, "connection", None)
            saved = getattr(ps, "_aci_retry", None)
            if conn is not None and saved is not None:
                conn.retry = saved
                del ps._aci_retry
            ps.reset()
        except Exception:
            pass

    def _tick_main(self) -> None:
        self._run(self._core.tick_loop())
        # The final publish runs on this thread, so that stop() can bound its wait on a frozen
        # Redis without leaving the caller stuck.
        self._run(self._core.op_stop())

    # ------------------------------------------------------------------------------------------
    # public API

    def get(self, key: Any) -> Any:
        core = self._core
        rk = core.rkey(key)
        hit, value, token = core.lookup(rk)
        return value if hit else core.get_done(rk, token, self._try(core.get_plan(rk, token)))

    def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        """SET with a TTL (``default_ttl`` seconds unless given). Under ``eager`` the write and
        its invalidation go to Redis in one pipeline; otherwise the policy batches it or leaves
        it to the TTL."""
        plan = self._core.set_plan(key, value, ttl)
        return self._core.set_done(plan, self._try(plan[0]))

    def delete(self, key: Any) -> int:
        """DEL, and an invalidation published at once whatever the strategy."""
        plan = self._core.delete_plan(key)
        return self._core.delete_done(plan, self._try(plan[0]))

    def _try(self, cmds: List[Any]) -> Any:
        """The commands' results, or the exception they raised, an interrupt too (the core's
        *_done settles the write and re-raises it)."""
        try:
            return self._do_cmds(cmds)
        except BaseException as e:
            return e

    def flush(self) -> None:
        """Remove the data and make every instance drop its local cache. With a namespace: the
        namespace's keys only (SCAN + UNLINK in batches); without one: the whole database
        (FLUSHDB), as the original package did."""
        self._run(self._core.op_flush())


    def swap_policy(self, policy: Any, *, strategy: Optional[str] = None) -> RunningPolicy:
        """Replace the policy while serving: ``policy`` is a path to a component, its bytes, or a
        shipped name (``"adaptive"``, ``"fixed"``); ``strategy`` sets its ``initial-strategy``
        (the one ``fixed`` keeps). The new component is compiled, checked and configured here,
        within the sandbox; if anything is wrong the running policy is left as it is and
        ``PolicyLoadError`` (bad component) or ``ConfigValueError`` (settings it refuses,
        naming the setting) is raised. Otherwise it takes over at the next tick, with the mode
        (leading or following), the strategy in force and the measured rate; the keys the old
        instance buffered are published, never dropped. Returns once that is done, with the
        new policy's name, version and sha256."""
        core = self._core
        if self._stopped:
            raise RuntimeError("aci-cache: the cache is stopped; no policy swap")
        req = core.prepare_swap(policy, strategy=strategy)
        req.after = lambda: core.local_swapped(req, strategy)
        core.request_swap(req)
        self._wake.set()
        deadline = time.monotonic() + self._swap_wait_s()
        while not req.done.wait(0.05):
            if not self._tick_thread.is_alive():
                raise RuntimeError("aci-cache: the cache stopped before the policy swap")
            if time.monotonic() > deadline:
                raise TimeoutError("aci-cache: the tick did not run within "
                                   f"{self._swap_wait_s():.1f} s (Redis frozen?); the swap stays queued")
        if req.error is not None:
            raise req.error
        return req.info

    def stop(self) -> None:
        """Publish what is still batched, give up the controller lease, stop the threads.
        Idempotent; safe from an on_switch callback; waits at most ``stop_timeout``."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        _exit.unregister(self)
        self._core.stopping = True
        self._stop_evt.set()
        self._wake.set()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me and t.is_alive():
                t.join(timeout=self.config.stop_timeout)
                if t.is_alive():
                    log.error("aci-cache %s: %s did not finish within stop_timeout (Redis frozen?)",
                              self.instance_id, t.name)
        if not self._tick_thread.is_alive() and me is not self._tick_thread:
            self._close_own()

    def _close_own(self) -> None:
        for conn in self._watch.values():
            try:
                conn.disconnect()
            except Exception:
                pass
        self._watch.clear()
        try:
            if self._cluster:
                self._client.close()
            elif self._own_pool is not None:
                # in-use connections too, so the fast path's idle ones as well
                self._own_pool.disconnect()
        except Exception:
            pass

    close = stop
    _exit_stop = stop

    def __enter__(self) -> "AdaptiveCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
