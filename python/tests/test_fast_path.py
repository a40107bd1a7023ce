"""The eager write's fast path: commands packed by us (redis-py's packing cost ~19 us of an
eager write), with the bytes redis-py would send; the writer's own messages read back in
batches, not one wake of the Pub/Sub thread per write."""

import time

import pytest
import redis

from aci_cache.cache import _pack


@pytest.mark.parametrize("cmds", [
    [("SET", "aci:ns:k", "v", "EX", 600), ("PUBLISH", "aci:ns:invalidation", '{"keys":["é"]}')],
    [("SET", "k", b"\x00\xff\r\n", "PX", 1)],
    [("SET", "k", 3.25, "EX", 1), ("DEL", "a", "b"), ("SET", "k", 7, "EX", 1)],
    [("SET", "k", memoryview(b"abc"), "EX", 1)],
    [("SET", "k", "x" * 10000, "EX", 1)],
])
def test_packs_what_redis_py_packs(cmds):
    for conn in (redis.Redis().connection_pool.make_connection(),
                 redis.Redis(encoding="latin-1").connection_pool.make_connection()):
        want = b"".join(bytes(x) for x in conn.pack_commands(cmds))
        assert _pack(cmds, conn.encoder.encode) == want


def test_refuses_what_redis_py_refuses():
    conn = redis.Redis().connection_pool.make_connection()
    with pytest.raises(redis.DataError):
        _pack([("SET", "k", True)], conn.encoder.encode)
    with pytest.raises(redis.DataError):
        _pack([("SET", "k", None)], conn.encoder.encode)


def test_own_messages_are_read_in_batches_while_writing(make_cache, ns):
    # Each wake of the Pub/Sub thread takes the GIL from the writer: an eager writer's own
    # messages must come back a batch per read (they did one per write: eager at 0.60x a SET).
    c = make_cache(namespace=ns, strategy="eager", is_controller=True)
    raw = c._raw
    assert raw is not None, "the lean reader serves a plain TCP connection"
    events = []
    get = raw.get

    def counting(timeout):
        ev = get(timeout)
        if ev is not None and ev["type"] == "own":
            events.append(ev["count"])
        return ev

    raw.get = counting
    time.sleep(0.2)
    events.clear()
    n = 500
    t0 = time.monotonic()
    for i in range(n):
        c.set(f"k{i % 50}", "v")
    # Wait for the tail to be read.
    deadline = time.monotonic() + 2
    while sum(events) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    # (plus the controller's own heartbeats and strategy updates)
    assert sum(events) >= n, f"own messages read back: {sum(events)} of {n}"
    # One read per OWN_BATCH_DELAY (5 ms) at most, plus slack for the first and the last.
    writing = time.monotonic() - t0
    assert len(events) <= writing / 0.005 + 5, f"{len(events)} reads for {n} writes in {writing:.2f} s"
