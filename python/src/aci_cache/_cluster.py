"""Redis Cluster support shared by both front ends: detecting a cluster client, a client of our
own with bounded timeouts, how commands are grouped by slot, and reading the topology.

How a cache uses a cluster (docs/WIRE.md, "Redis Cluster"):
- user keys are spread over slots as usual; every command list a program yields is cut into runs
  of consecutive commands on one slot, each run one pipeline to its node, the runs in order
  (an eager SET and its SPUBLISH go to different shards: the SPUBLISH is sent only once the SET
  is acknowledged, so no reader can re-read the old value after hearing the invalidation);
- the fleet channels carry one hash tag (``{P}``), so they live on one shard and are sent with
  SPUBLISH and received over one SSUBSCRIBE connection to that shard's master;
- every tick the cache reads CLUSTER NODES from the node it is subscribed to: while a master that
  owns slots is failing (``fail?``/``fail``) or unreachable from there, L1 is flushed and not
  served; when the masters, their config epochs or their slots change (a failover, a
  resharding), L1 is flushed once more (a promoted replica may lack writes the old master
  acknowledged, and our L1 may hold them).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from redis.crc import key_slot

__all__ = ["is_cluster", "own_cluster_client", "runs", "slot_of", "topology", "key_slot"]

Fingerprint = Tuple[Tuple[str, str, str], ...]


def is_cluster(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
        if isinstance(client, RedisCluster):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        return isinstance(client, AsyncRedisCluster)
    except ImportError:  # pragma: no cover
        return False


def _startup(client: Any) -> List[Tuple[str, int]]:
    nm = getattr(client, "nodes_manager", None)
    nodes: Iterable[Any] = []
    if nm is not None:
        nodes = list(getattr(nm, "nodes_cache", {}).values()) or list(getattr(nm, "startup_nodes", {}).values())
    out = [(n.host, int(n.port)) for n in nodes]
    return out


#: The connection settings carried over from the user's client (credentials, TLS, encoding); the
#: rest (pools, timeouts, retries, callbacks) are ours.
_KEEP = ("username", "password", "credential_provider", "encoding", "encoding_errors", "decode_responses",
         "protocol", "client_name", "ssl", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs",
         "ssl_ca_data", "ssl_ca_path", "ssl_check_hostname", "ssl_password", "ssl_min_version", "ssl_ciphers")


def conn_kwargs(client: Any, timeout: float) -> dict:
    kw = getattr(client, "connection_kwargs", None)
    if not isinstance(kw, dict):
        kw = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None) or {}
    out = {k: v for k, v in kw.items() if k in _KEEP}
    out["socket_timeout"] = timeout
    out["socket_connect_timeout"] = timeout
    return out


def own_cluster_client(client: Any, timeout: float, asyncio: bool) -> Any:
    """A RedisCluster of our own over the same nodes and credentials, with ``timeout`` on every
    socket operation and few retries (a MOVED/ASK or a reconnect after a failover), so that a
    call fails within a few ``command_timeout`` on a frozen node. The user's client is left as
    it is."""
    if asyncio:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
    else:
        from redis.cluster import ClusterNode, RedisCluster  # type: ignore[assignment]
        from redis.retry import Retry  # type: ignore[assignment]
    from redis.backoff import NoBackoff

    kw = conn_kwargs(client, timeout)
    nodes = [ClusterNode(h, p) for h, p in _startup(client)]
    if not nodes:
        raise ValueError("aci-cache: the RedisCluster client has no startup node")
    return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 2), require_full_coverage=False, **kw)


def watch_connection(node: Any, client: Any, timeout: float) -> Any:
    """A plain connection to a node, no retry: its reset is the sign of a restart."""
    from redis.backoff import NoBackoff
    from redis.connection import Connection
    from redis.retry import Retry

    kw = conn_kwargs(client, timeout)
    conn = Connection(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **kw)
    conn.connect()
    return conn


def hash_tag(p: str) -> str:
    return "{" + p + "}"


def slot_of(cmd: Sequence[Any]) -> Optional[int]:
    """The slot a command of ours addresses (its key or shard channel), None if it has none."""
    name = cmd[0]
    if name in ("GET", "PTTL", "SET", "DEL", "SPUBLISH", "UNLINK"):
        k = cmd[1]
    elif name == "EVAL":
        k = cmd[3]
    else:
        return None
    return key_slot(k.encode("utf-8") if isinstance(k, str) else k)


def runs(cmds: Sequence[Sequence[Any]]) -> List[List[Sequence[Any]]]:
    """Consecutive commands on one slot (or with no key) grouped, order kept."""
    out: List[List[Sequence[Any]]] = []
    last: Any = object()
    for c in cmds:
        s = slot_of(c)
        if out and s == last and s is not None:
            out[-1].append(c)
        else:
            out.append([c])
        last = s
    return out


def topology(nodes: Any) -> Tuple[bool, Fingerprint]:
    """(healthy, fingerprint) from a CLUSTER NODES reply. Healthy: no master that owns slots is
    flagged failing or has its link down. The fingerprint (id, config epoch, slots of every
    master owning slots) changes on a failover (new master, new epoch) or a resharding."""
    if isinstance(nodes, bytes):
        nodes = nodes.decode("utf-8", "replace")
    if isinstance(nodes, dict):  # a client that parses CLUSTER NODES: rebuild the text lines
        raise TypeError("CLUSTER NODES came back parsed; expected the raw reply")
    healthy = True
    fp: List[Tuple[str, str, str]] = []
    for line in str(nodes).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        flags = f[2].split(",")
        if "master" not in flags or len(f) < 9:
            continue  # replicas, and masters that own no slot, are not where data lives
        slots = " ".join(s for s in f[8:] if not s.startswith("["))  # [..] are migrations in flight
        if not slots:
            continue
        if "fail" in flags or "fail?" in flags or "noaddr" in flags or f[7] != "connected":
            healthy = False
        fp.append((slots, f[0], f[6]))
    fp.sort()
    return healthy, tuple(fp)
