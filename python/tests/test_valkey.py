"""What differs between the servers the suites run on (Debian's Redis 7.0 and Valkey 8.1, picked
with ACI_REDIS_SERVER): each difference our code depends on is pinned here, so a Valkey run that
silently used redis-server, or a server reply our parsers misread, fails."""

from __future__ import annotations

import os

from aci_cache import _cluster


def test_the_server_under_test_is_the_one_asked_for(server_info):
    exe = os.path.basename(os.environ.get("ACI_REDIS_SERVER") or "redis-server")
    if exe == "valkey-server":
        # Valkey calls itself Redis 7.2.4 for compatibility, and says what it is elsewhere.
        assert server_info["valkey_version"].startswith("8.1."), server_info
        assert server_info.get("server_name") == "valkey"
        assert server_info["redis_version"] == "7.2.4"
    else:
        assert "valkey_version" not in server_info
        assert server_info["redis_version"].split(".")[0] >= "7"  # sharded Pub/Sub needs >= 7.0


def test_cluster_nodes_reply_reads_as_healthy_on_every_node(redis_cluster):
    # Valkey 8 adds hostnames/shard ids to the cluster bus; CLUSTER NODES must still read as 3
    # masters covering every slot, the same from every node.
    seen = set()
    for port in redis_cluster.ports:
        c = redis_cluster.node_client(port)
        try:
            healthy, fp = _cluster.topology(c.execute_command("CLUSTER", "NODES"))
        finally:
            c.close()
        assert healthy
        assert len(fp) == 3
        covered = 0
        for slots, _id, epoch in fp:
            assert int(epoch) >= 1
            for r in slots.split():
                lo, _, hi = r.partition("-")
                covered += int(hi or lo) - int(lo) + 1
        assert covered == 16384
        seen.add(fp)
    assert len(seen) == 1


def test_shard_channels_are_visible_to_pubsub_shardchannels(redis_cluster):
    # Our tests read PUBSUB SHARDCHANNELS / SHARDNUMSUB to prove delivery is sharded: both
    # servers must answer them the same way.
    import redis

    chan = "{aci:probe}:invalidation"
    port = redis_cluster.master_of(chan)
    sub = redis.Redis(host="127.0.0.1", port=port)
    ps = sub.pubsub()
    ps.ssubscribe(chan)
    assert ps.get_message(timeout=2)["type"] in ("ssubscribe", b"ssubscribe")
    c = redis_cluster.node_client(port)
    try:
        assert c.execute_command("PUBSUB", "SHARDCHANNELS", "{aci:probe}*") == [chan]
        assert c.execute_command("PUBSUB", "SHARDNUMSUB", chan) == [chan, 1]
        assert c.execute_command("PUBSUB", "CHANNELS", "*") == []
    finally:
        c.close()
        ps.reset()
        sub.close()
