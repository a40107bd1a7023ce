"""The history checker must itself be able to fail: these histories are stale, phantom or fine by
construction."""
import pytest

from harness import Read, Write, check


def w(key, value, start, bound=1.0, node="a"):
    return Write(key, value, node, start, start + 0.01, bound)


def r(key, value, start, node="b"):
    return Read(key, value, node, start, start + 0.001)


def test_a_read_within_the_bound_is_fine():
    v = check([w("k", "1", 0.0), w("k", "2", 1.0)], [r("k", "1", 1.5), r("k", "2", 2.5)])
    assert v.ok and v.max_stale_within_bound == pytest.approx(0.49)


def test_a_read_past_the_bound_is_stale():
    v = check([w("k", "1", 0.0), w("k", "2", 1.0, bound=0.5)], [r("k", "1", 1.6)])
    assert len(v.stale) == 1 and "bound 0.50" in v.stale[0]


def test_the_bound_of_the_newer_write_counts():
    # The old value was written under a long bound; the newer write's short bound decides.
    v = check([w("k", "1", 0.0, bound=10), w("k", "2", 1.0, bound=0.2)], [r("k", "1", 1.5)])
    assert not v.ok


def test_a_miss_after_a_write_is_stale_and_after_a_delete_is_fine():
    v = check([w("k", "1", 0.0), w("k", None, 1.0), w("k", "3", 2.0, bound=0.1)],
              [r("k", None, 1.5), r("k", None, 2.5)])
    assert len(v.stale) == 1 and "2.5" in v.stale[0]


def test_values_never_written_or_read_early_are_phantoms():
    v = check([w("k", "1", 5.0)], [r("k", "x", 6.0), r("k", "1", 1.0)])
    assert len(v.phantom) == 2


def test_overlapping_writes_to_one_key_are_refused():
    with pytest.raises(ValueError):
        check([Write("k", "1", "a", 0.0, 2.0, 1), Write("k", "2", "a", 1.0, 3.0, 1)], [])
