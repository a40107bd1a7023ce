"""The node driver (docs/NODE.md): one cache instance driven over stdin/stdout.

    python -m aci_cache.node [--redis URL] [--namespace NS] [--role auto|controller|follower]
                             [--strategy ttl|batched|eager] [--tick-ms N] [--instance-id ID]
                             [--local-ttl-ms N] [--policy-public-key HEX64]
                             [--policy-allow-hashes H1,H2,...] [--policy-rollback-faults N]

Prints {"ready":true,"instance_id":...,"host":"python","protocol":2} once started, then one JSON
line per command: set K V [TTL_MS], get K, del K, strategy, stats, policy, quit. End of input,
SIGTERM and SIGINT shut down like quit (pending batch published, lease released) without the
answer. The policy flags are the trust of docs/WIRE.md 9.5 (neither a key nor hashes: pushed
policies are ignored and reported as refused); `policy` answers this instance's status record
(WIRE.md 9.8).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any, Dict, List, NoReturn, Optional

from . import wire

PROG = "aci_cache.node"
FLAGS = ("--redis", "--namespace", "--role", "--strategy", "--tick-ms", "--instance-id", "--local-ttl-ms",
         "--policy-public-key", "--policy-allow-hashes", "--policy-rollback-faults")


def _usage_error(msg: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _positive_int(flag: str, v: str) -> int:
    try:
        n = int(v, 10)
    except ValueError:
        _usage_error(f"{flag}: not an integer: {v!r}")
    if n <= 0:
        _usage_error(f"{flag}: must be > 0, got {n}")
    return n


def parse_args(argv: List[str]) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"redis": "redis://127.0.0.1:6379", "namespace": None, "role": "auto",
                            "strategy": None, "tick_ms": 250, "instance_id": None, "local_ttl_ms": 5000,
                            "policy_public_key": None, "policy_allow_hashes": None, "policy_rollback_faults": 3}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(__doc__ or "")
            raise SystemExit(0)
        flag, eq, val = a.partition("=")
        if flag not in FLAGS:
            _usage_error(f"unknown flag {a!r} (known: {', '.join(FLAGS)})")
        if not eq:
            if i + 1 >= len(argv):
                _usage_error(f"{flag}: missing value")
            i += 1
            val = argv[i]
        key = flag[2:].replace("-", "_")
        if key in ("tick_ms", "local_ttl_ms", "policy_rollback_faults"):
            opts[key] = _positive_int(flag, val)
        elif key == "policy_allow_hashes":
            opts[key] = tuple(h for h in val.split(",") if h)
        elif key == "role" and val not in ("auto", "controller", "follower"):
            _usage_error(f"--role: must be auto, controller or follower, got {val!r}")
        elif key == "strategy" and val not in ("ttl", "batched", "eager"):
            _usage_error(f"--strategy: must be ttl, batched or eager, got {val!r}")
        else:
            opts[key] = val
        i += 1
    try:
        wire.Names("aci", opts["namespace"], opts["instance_id"] or "x")
    except wire.NameError_ as e:
        _usage_error(f"--{e.field.replace('_', '-')}: {e.message}")
    from .config import ConfigValueError
    from .rollout import Trust

    try:
        Trust(opts["policy_public_key"], opts["policy_allow_hashes"])
    except ConfigValueError as e:
        _usage_error(f"--{e.field.replace('_', '-')}: {str(e)[len(e.field) + 1:]}")
    if not opts["redis"].startswith(("redis://", "rediss://", "unix://")):
        _usage_error(f"--redis: not a redis:// URL: {opts['redis']!r}")
    return opts


class Shutdown(Exception):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    raise Shutdown()


def _stats(cache: Any) -> Dict[str, Any]:
    s = cache.stats
    return {
        "reads": s.total_reads, "l1_hits": s.cache_hits, "l1_misses": s.cache_misses, "writes": s.total_writes,
        "messages_sent": s.messages_sent, "pubsub_received": s.pubsub_received,
        "messages_received": s.messages_received, "invalidations_applied": s.invalidations_applied,
        "gaps": s.gaps, "malformed": s.malformed, "is_controller": s.is_controller, "strategy": s.current_strategy,
        "write_rate": s.write_rate, "l1_entries": s.l1_entries, "link_up": s.link_up, "lagging": s.lagging,
        "resubscribes": s.resubscribes, "publish_errors": s.publish_errors, "engine_faults": s.engine_faults,
        "policy_name": s.policy_name, "policy_version": s.policy_version, "policy_hash": s.policy_hash,
        "policy_origin": s.policy_origin, "policy_rollout": s.policy_rollout, "policy_swaps": s.policy_swaps,
        "policy_faults": s.policy_faults,
    }


def handle(cache: Any, line: str) -> Optional[Dict[str, Any]]:
    """One command -> its answer (None for quit)."""
    words = line.split(" ")
    cmd, args = words[0], words[1:]
    if cmd == "set" and len(args) in (2, 3):
        ttl = None
        if len(args) == 3:
            try:
                ms = int(args[2], 10)
            except ValueError:
                return {"error": f"set: TTL_MS is not an integer: {args[2][:64]!r}"}
            if ms <= 0:
                return {"error": f"set: TTL_MS must be > 0, got {ms}"}
            ttl = ms / 1000.0
        cache.set(args[0], args[1], ttl=ttl)
        return {"ok": True}
    if cmd == "get" and len(args) == 1:
        return {"value": cache.get(args[0])}
    if cmd == "del" and len(args) == 1:
        cache.delete(args[0])
        return {"ok": True}
    if cmd == "strategy" and not args:
        return {"strategy": cache.strategy}
    if cmd == "stats" and not args:
        return _stats(cache)
    if cmd == "policy" and not args:
        return cache.policy_status()
    if cmd == "quit" and not args:
        return None
    return {"error": f"unknown command or wrong arguments: {line[:80]!r} "
                     "(set K V [TTL_MS], get K, del K, strategy, stats, policy, quit)"}


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    import redis

    from .cache import AdaptiveCache

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    out = sys.stdout

    def emit(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    cache = None
    try:
        client = redis.Redis.from_url(opts["redis"], decode_responses=True)
        cache = AdaptiveCache(
            client, namespace=opts["namespace"], role=opts["role"], strategy=opts["strategy"],
            tick_interval=opts["tick_ms"] / 1000.0, instance_id=opts["instance_id"],
            local_ttl=opts["local_ttl_ms"] / 1000.0, policy_public_key=opts["policy_public_key"],
            policy_allow_hashes=opts["policy_allow_hashes"], policy_rollback_faults=opts["policy_rollback_faults"],
        )
        emit({"ready": True, "instance_id": cache.instance_id, "host": "python", "protocol": wire.PROTOCOL_VERSION})
        for raw in sys.stdin:
            line = raw.rstrip("\r\n")
            if not line:
                continue
            try:
                ans = handle(cache, line)
            except Shutdown:
                raise
            except Exception as e:
                ans = {"error": f"{type(e).__name__}: {e}".replace("\n", " ")[:500]}
            if ans is None:
                cache.stop()
                emit({"bye": True})
                return 0
            emit(ans)
    except Shutdown:
        pass
    except (ConnectionError, OSError, ValueError, TypeError) as e:
        if cache is None:
            sys.stderr.write(f"{PROG}: {type(e).__name__}: {e}".replace("\n", " ") + "\n")
            return 1
        raise
    finally:
        if cache is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            cache.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
