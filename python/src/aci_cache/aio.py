"""AsyncAdaptiveCache: the asyncio front end. Only I/O lives here: it runs the programs of
``_core.Core`` (the protocol) over a ``redis.asyncio`` (or ``fakeredis.aioredis``) client."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from . import _cluster, _exit
from ._core import Core, FrontEnd, Program, RunningPolicy, log, own_client
from .config import CacheConfig

__all__ = ["AsyncAdaptiveCache"]


class AsyncAdaptiveCache(FrontEnd):
    """The asyncio twin of :class:`~aci_cache.AdaptiveCache`: the same settings and behaviour,
    with coroutine methods. Start it with ``async with`` or ``await cache.start()`` (the first
    operation starts it too); stop it with ``await cache.stop()``. ``on_switch`` callbacks may be
    coroutine functions. ``redis_client`` may be a ``redis.asyncio.cluster.RedisCluster``."""

    def __init__(self, redis_client: Any, pubsub_client: Any = None, **config: Any):
        cfg = CacheConfig.from_kwargs(**config)
        self.config = cfg
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._cluster = _cluster.is_cluster(redis_client)
        self._ps_node: Any = None
        self._ps_conn: Any = None
        self._ps_failed = False
        self._watch: dict = {}
        if self._cluster:
            # redis.asyncio.cluster.RedisCluster: see AdaptiveCache and docs/WIRE.md "Redis Cluster"
            self._client = _cluster.own_cluster_client(redis_client, cfg.command_timeout, True)
            self._own_pool = None
        else:
            self._client, self._own_pool = own_client(redis_client, cfg.command_timeout, Retry(NoBackoff(), 0))
        enc = redis_client.get_encoder()
        self._core = Core(cfg, enc, bool(getattr(enc, "decode_responses", False)), self._cluster)
        self._pubsub_src = pubsub_client
        self._ps: Any = None
        self._tasks: List["asyncio.Task[Any]"] = []
        self._stop_evt: Optional[asyncio.Event] = None
        self._wake: Optional[asyncio.Event] = None
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------------------------------
    # running programs

    async def _run(self, prog: Program) -> Any:
        """Drive a program: await each request it yields and send the result back in. Left
        mid-request (cancelled), the program is closed: it settles what it had in flight."""
        step = prog.send
        arg: Any = None
        try:
            while True:
                try:
                    req = step(arg)
                except StopIteration as done:
                    return done.value
                try:
                    arg = await getattr(self, "_do_" + req[0])(*req[1:])
                    step = prog.send
                except Exception as e:
                    arg, step = e, prog.throw
        finally:
            prog.close()

    async def _do_cmds(self, cmds: List[Any]) -> List[Any]:
        c = self._client
        if self._cluster:
            return await self._cluster_cmds(cmds)
        if len(cmds) == 1:
            return [await c.execute_command(*cmds[0])]
        pipe = c.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return await pipe.execute()

    async def _cluster_cmds(self, cmds: List[Any]) -> List[Any]:
        """As AdaptiveCache._cluster_cmds: runs of one slot, in order."""
        from redis.exceptions import RedisError, ResponseError

        c = self._client
        out: List[Any] = []
        err: Optional[Exception] = None
        try:
            for run in _cluster.runs(cmds):
                if len(run) == 1:
                    try:
                        if tuple(run[0]) == ("PING",):
                            await c.initialize()
                            out.append(await c.execute_command("PING", target_nodes=c.get_default_node()))
                        else:
                            out.append(await c.execute_command(*run[0]))
                    except ResponseError as e:
                        out.append(e)
                        err = err or e
                    continue
                pipe = c.pipeline(transaction=False)
                for cmd in run:
                    pipe.execute_command(*cmd)
                for r in await pipe.execute(raise_on_error=False):
                    out.append(r)
                    if isinstance(r, ResponseError):
                        err = err or r
                    elif isinstance(r, Exception):
                        raise r  # a connection or cluster error: nothing of this run is known
        except (OSError, RedisError) as e:
            if not isinstance(e, ResponseError):
                self._core.on_topology(False, None)
            raise
        if err is not None:
            raise err
        return out

    @staticmethod
    def _one(res: Any) -> Any:
        return next(iter(res.values())) if isinstance(res, dict) else res

    async def _do_topology(self) -> Any:
        c = self._client
        node = self._ps_node
        if node is None or c.get_node(node_name=node.name) is None:
            node = c.get_random_node()
        healthy, fp = _cluster.topology(self._one(await c.execute_command("CLUSTER", "NODES", target_nodes=node)))
        # as AdaptiveCache._do_topology: a reset of our own connection to a master = a restart
        from redis.asyncio.connection import Connection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        watch = self._watch
        primaries = {n.name: n for n in c.get_primaries()}
        for name in list(watch):
            if name not in primaries:
                await watch.pop(name).disconnect()
        for name, n in primaries.items():
            conn = watch.get(name)
            try:
                if conn is None:
                    conn = Connection(host=n.host, port=n.port, retry=Retry(NoBackoff(), 0),
                                      **_cluster.conn_kwargs(c, self.config.command_timeout))
                    watch[name] = conn
                    await conn.connect()
                await conn.send_command("PING")
                await conn.read_response()
            except Exception:
                healthy = False
                bad = watch.pop(name, None)
                if bad is not None:
                    try:
                        await bad.disconnect()
                    except Exception:
                        pass
        return healthy, fp

    async def _do_cluster_clear(self, pattern: Optional[str]) -> None:
        c = self._client
        if pattern is None:
            await c.execute_command("FLUSHDB", target_nodes=c.get_primaries())
            return
        for node in c.get_primaries():
            cursor: Any = 0
            while True:
                cursor, keys = self._one(await c.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000,
                                                                 target_nodes=node))
                by_slot: dict = {}
                for k in keys:
                    by_slot.setdefault(_cluster.key_slot(k if isinstance(k, bytes) else k.encode()), []).append(k)
                for ks in by_slot.values():
                    await c.execute_command("UNLINK", *ks)
                if int(cursor) == 0:
                    break
    async def _do_raw(self, cmd: Any) -> Any:
        from redis.client import NEVER_DECODE

        return await self._client.execute_command(*cmd, **{NEVER_DECODE: True})

    async def _do_call(self, fn: Any, args: Any, kwargs: Any) -> Any:
        # compiling a component takes a while: not on the event loop
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _do_wait(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _do_sleep(self, seconds: float) -> None:
        assert self._stop_evt is not None
        try:
            await asyncio.wait_for(self._stop_evt.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _do_wake(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def _do_callbacks(self, cbs: List[Any]) -> None:
        for cb, old, new in cbs:
            try:
                r = cb(old, new)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                self._core.callback_failed()

    async def _do_ps_open(self) -> None:
        if self._cluster:
            import redis.asyncio as aredis

            c = self._client
            await c.initialize()  # once; a no-op afterwards
            if self._ps_failed:
                await c.nodes_manager.initialize()  # the slot map may be stale after a failure
            self._ps_failed = True
            node = c.nodes_manager.get_node_from_slot(_cluster.key_slot(self._core.ch_inval.encode()))
            self._ps_node = node
            kw = _cluster.conn_kwargs(c, self.config.command_timeout)
            await self._close_ps_conn()
            self._ps_conn = aredis.Redis(host=node.host, port=node.port, **kw)
            self._ps = self._ps_conn.pubsub()
            return
        src = self._pubsub_src
        if src is None:
            self._ps = self._client.pubsub()
        elif hasattr(src, "get_message") and hasattr(src, "subscribe"):
            await src.reset()  # a PubSub object given by the caller: reuse it
            self._ps = src
        else:
            self._ps = src.pubsub()

    async def _do_ps_sub(self, channels: List[str]) -> None:
        if self._cluster:
            await self._ps.ssubscribe(*channels)
        else:
            await self._ps.subscribe(*channels)
        # A dead link must surface here rather than be retried inside redis-py while messages are
        # lost; the original retry goes back with the connection when it is released.
        conn = getattr(self._ps, "connection", None)
        if conn is not None and hasattr(conn, "retry") and not hasattr(self._ps, "_aci_retry"):
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._ps._aci_retry = conn.retry
            conn.retry = Retry(NoBackoff(), 0)

    async def _do_ps_unsub(self, channels: List[str]) -> None:
        if self._cluster:
            await self._ps.sunsubscribe(*channels)
        else:
            await self._ps.unsubscribe(*channels)

    async def _do_ps_get(self, timeout: float) -> Any:
        msg = await self._ps.get_message(timeout=timeout)
        if msg is not None and self._cluster and msg.get("type") in ("ssubscribe", b"ssubscribe"):
            self._ps_failed = False
        return msg

    async def _close_ps_conn(self) -> None:
        conn, self._ps_conn = self._ps_conn, None
        if conn is not None:
            try:
                await conn.aclose()
            except Exception:
                pass

    async def _do_ps_close(self) -> None:
        ps, self._ps = self._ps, None
        if ps is None:
            return
        try:
            saved = getattr(ps, "_aci_retry", None)
            if saved is not None and getattr(ps, "connection", None) is not None:
                ps.connection.retry = saved
            await (ps.aclose() if hasattr(ps, "aclose") else ps.reset())
        except Exception:
            pass
        await self._close_ps_conn()

    # ------------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> "AsyncAdaptiveCache":
        """Check Redis (``ConnectionError`` at once if it does not answer), settle the role,
        subscribe (waits up to ``connect_timeout``) and start the background tasks."""
        if self._started:
            return self
        self._started = True
        self._stop_evt = asyncio.Event()
        self._wake = asyncio.Event()
        core = self._core
        await self._run(core.op_start())
        iid = core.instance_id
        self._tasks = [
            asyncio.create_task(self._run(core.sub_loop()), name=f"aci-pubsub-{iid}"),
            asyncio.create_task(self._run(core.tick_loop()), name=f"aci-tick-{iid}"),
        ]
        if core.rollout is not None:
            self._tasks.append(asyncio.create_task(self._run(core.rollout.loop()), name=f"aci-rollout-{iid}"))
        _exit.register(self)
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout
        while not core.subscribed.is_set() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        """Publish what is still batched, give up the controller lease, end the tasks."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        _exit.unregister(self)
        assert self._stop_evt is not None and self._wake is not None
        self._core.stopping = True
        self._stop_evt.set()
        self._wake.set()
        me = asyncio.current_task()
        others = [t for t in self._tasks if t is not me]
        if others:
            _done, pending = await asyncio.wait(others, timeout=self.config.stop_timeout)
            for t in pending:
                t.cancel()
        try:
            await asyncio.wait_for(self._run(self._core.op_stop()), self.config.stop_timeout)
        except asyncio.TimeoutError:
            log.error("aci-cache %s: the final publish did not finish within stop_timeout", self.instance_id)
        for conn in self._watch.values():
            try:
                await conn.disconnect()
            except Exception:
                pass
        self._watch.clear()
        try:
            if self._cluster:
                await self._client.aclose()
            elif self._own_pool is not None:
                await self._own_pool.disconnect()
        except Exception:
            pass

    aclose = stop

    def _exit_stop(self) -> None:
        """At interpreter exit or SIGTERM without ``stop()``: the event loop may be gone, so the
        final publish (pending batch, lease release) runs over a synchronous connection to the
        same server, driving the same program as ``stop()``."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._core.stopping = True
        if self._cluster:
            return  # no event loop to route over the cluster: batched keys age out by local_ttl
        pool = getattr(self._client, "connection_pool", None)
        cls = getattr(pool, "connection_class", None)
        if cls is None or cls.__module__ != "redis.asyncio.connection":
            return  # not a redis-py asyncio client (e.g. fakeredis): nothing to reach
        import redis

        keys = ("host", "port", "db", "username", "password", "path", "encoding", "encoding_errors",
                "decode_responses", "client_name")
        kw = {k: v for k, v in pool.connection_kwargs.items() if k in keys}
        kw["socket_timeout"] = kw["socket_connect_timeout"] = self.config.command_timeout
        sync_cls = redis.UnixDomainSocketConnection if "path" in kw else redis.Connection
        if "path" not in kw and cls.__name__ != "Connection":
            return  # TLS or a custom connection: not reproducible here
        client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=sync_cls, **kw))
        prog = self._core.op_stop()
        try:
            req = prog.send(None)
            while True:
                try:
                    res: Any = [client.execute_command(*c) for c in req[1]] if req[0] == "cmds" else None
                except Exception as e:
                    req = prog.throw(e)
                else:
                    req = prog.send(res)
        except StopIteration:
            pass
        finally:
            client.close()

    async def __aenter__(self) -> "AsyncAdaptiveCache":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------
    # public API

    async def get(self, key: Any) -> Any:
        if not self._started:
            await self.start()
        core = self._core
        rk = core.rkey(key)
        hit, value, token = core.lookup(rk)
        return value if hit else core.get_done(rk, token, await self._try(core.get_plan(rk, token)))

    async def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        if not self._started:
            await self.start()
        plan = self._core.set_plan(key, value, ttl)
        return self._core.set_done(plan, await self._try(plan[0]))

    async def delete(self, key: Any) -> int:
        if not self._started:
            await self.start()
        plan = self._core.delete_plan(key)
        return self._core.delete_done(plan, await self._try(plan[0]))

    async def _try(self, commands: List[Any]) -> Any:
        """The commands' results, or the exception they raised, a cancellation too (the core's
        *_done settles the write, counting a cancelled one as failed, and re-raises it)."""
        try:
            return await self._do_cmds(commands)
        except BaseException as e:
            return e

    async def swap_policy(self, policy: Any, *, strategy: Optional[str] = None) -> RunningPolicy:
        """As :meth:`AdaptiveCache.swap_policy` (the component is compiled and checked in a
        worker thread, so the event loop keeps serving meanwhile)."""
        if not self._started:
            await self.start()
        if self._stopped:
            raise RuntimeError("aci-cache: the cache is stopped; no policy swap")
        core = self._core
        req = await asyncio.to_thread(core.prepare_swap, policy, strategy=strategy)
        req.after = lambda: core.local_swapped(req, strategy)
        core.request_swap(req)
        assert self._wake is not None
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._swap_wait_s()
        while not req.done.is_set():
            if self._stopped and all(t.done() for t in self._tasks):
                raise RuntimeError("aci-cache: the cache stopped before the policy swap")
            if loop.time() > deadline:
                raise TimeoutError("aci-cache: the tick did not run within "
                                   f"{self._swap_wait_s():.1f} s (Redis frozen?); the swap stays queued")
            await asyncio.sleep(0.01)
        if req.error is not None:
            raise req.error
        return req.info

    async def flush(self) -> None:
        """As :meth:`AdaptiveCache.flush`."""
        if not self._started:
            await self.start()
        await self._run(self._core.op_flush())
