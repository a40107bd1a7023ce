"""AsyncAdaptiveCache: the asyncio front end. Only I/O lives here: it runs the programs of
``_core.Core`` (the protocol) over a ``redis.asyncio`` (or ``fakeredis.aioredis``) client."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from . import _exit
from ._core import Core, FrontEnd, Program, RunningPolicy, log, own_client
from .config import CacheConfig

__all__ = ["AsyncAdaptiveCache"]


class AsyncAdaptiveCache(FrontEnd):
    """The asyncio twin of :class:`~aci_cache.AdaptiveCache`: the same settings and behaviour,
    with coroutine methods. Start it with ``async with`` or ``await cache.start()`` (the first
    operation starts it too); stop it with ``await cache.stop()``. ``on_switch`` callbacks may be
    coroutine functions."""

    def __init__(self, redis_client: Any, pubsub_client: Any = None, **config: Any):
        cfg = CacheConfig.from_kwargs(**config)
        self.config = cfg
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client, self._own_pool = own_client(redis_client, cfg.command_timeout, Retry(NoBackoff(), 0))
        enc = redis_client.get_encoder()
        self._core = Core(cfg, enc, bool(getattr(enc, "decode_responses", False)))
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
        """Drive a program: await each request it yields and send the result back in."""
        step = prog.send
        arg: Any = None
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

    async def _do_cmds(self, cmds: List[Any]) -> List[Any]:
        c = self._client
        if len(cmds) == 1:
            return [await c.execute_command(*cmds[0])]
        pipe = c.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return await pipe.execute()

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
        src = self._pubsub_src
        if src is None:
            self._ps = self._client.pubsub()
        elif hasattr(src, "get_message") and hasattr(src, "subscribe"):
            await src.reset()  # a PubSub object given by the caller: reuse it
            self._ps = src
        else:
            self._ps = src.pubsub()

    async def _do_ps_sub(self, channels: List[str]) -> None:
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
        await self._ps.unsubscribe(*channels)

    async def _do_ps_get(self, timeout: float) -> Any:
        return await self._ps.get_message(timeout=timeout)

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
        if self._own_pool is not None:
            try:
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
        try:
            return await self._do_cmds(commands)
        except Exception as e:
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
