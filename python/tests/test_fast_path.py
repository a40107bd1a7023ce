"""The eager write's fast path: commands packed by us (redis-py's packing cost ~19 us of an
eager write), with the bytes redis-py would send; the writer's own messages read back in
batches, not one wake of the Pub/Sub thread per write."""

import os
import threading
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


def test_stop_closes_every_connection_the_fast_path_kept(make_cache, ns, r):
    # The fast path keeps its connections between commands, out of the pool's idle list (the
    # pool's checks cost a tenth of a write); stop() must still close them all.
    before = len(r.client_list())
    c = make_cache(namespace=ns, strategy="eager", is_controller=True)
    threads = [threading.Thread(target=lambda: [c.set(f"k{i}", "v") for i in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(r.client_list()) > before
    c.stop()
    deadline = time.monotonic() + 2
    while len(r.client_list()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(r.client_list()) == before, r.client_list()


def test_a_forked_child_never_writes_on_the_parents_connections(make_cache, ns, r):
    # The idle stack is this process's: a child that sends commands after fork() gets
    # connections of its own (else each could read the other's replies). ECHO makes a reply
    # read by the wrong process visible.
    c = make_cache(namespace=ns, strategy="ttl", is_controller=True)
    c.set("k", "v")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's exit code is the assertion
        ok = False
        try:
            ok = all(c._do_cmds([("ECHO", f"c{i}")]) == [f"c{i}".encode()] for i in range(300))
        finally:
            os._exit(0 if ok else 1)
    for i in range(300):
        assert c._do_cmds([("ECHO", f"p{i}")]) == [f"p{i}".encode()]
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
