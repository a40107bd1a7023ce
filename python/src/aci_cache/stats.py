"""CacheStats: the original package's stats object, plus this package's extra counters."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Tuple

__all__ = ["CacheStats"]


class CacheStats(Mapping[str, Any]):
    """A snapshot of an instance's counters.

    The original's attributes: ``total_reads``, ``total_writes``, ``cache_hits``,
    ``cache_misses``, ``current_strategy``, ``write_rate``, ``strategy_switches`` (a list of
    ``(timestamp, from, to)``), and ``hit_rate``. Every other counter (``messages_sent``,
    ``gaps``, ``malformed``, ``l1_entries``, ...) is an attribute too, and the snapshot is also a
    read-only mapping (``stats["cache_hits"]``, ``dict(stats)``) for code written against 0.2.
    """

    __slots__ = ("_d",)

    total_reads: int
    total_writes: int
    cache_hits: int
    cache_misses: int
    current_strategy: str
    write_rate: float
    strategy_switches: List[Tuple[float, str, str]]

    def __init__(self, values: Dict[str, Any]):
        object.__setattr__(self, "_d", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(f"CacheStats has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("CacheStats is a read-only snapshot")

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __dir__(self) -> List[str]:
        return sorted(set(super().__dir__()) | set(self._d))

    @property
    def hit_rate(self) -> float:
        """cache_hits / total_reads (0.0 before the first read)."""
        reads = self._d.get("total_reads", 0)
        return self._d.get("cache_hits", 0) / reads if reads else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._d)

    def __repr__(self) -> str:
        keys = ("total_reads", "total_writes", "cache_hits", "cache_misses", "current_strategy", "write_rate")
        return "CacheStats(" + ", ".join(f"{k}={self._d.get(k)!r}" for k in keys) + ", ...)"
