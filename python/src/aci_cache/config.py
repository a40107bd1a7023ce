"""Configuration of a cache instance: the original's names and defaults, plus the near cache's."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from . import wire
from .engine import STRATEGIES

__all__ = ["CacheConfig", "ConfigValueError", "ROLES", "WIT_TO_PY"]


class ConfigValueError(ValueError):
    """An invalid setting; ``field`` is the constructor argument's name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message

ROLES = ("auto", "controller", "follower")

#: Policy config field (WIT name) -> the constructor argument it comes from.
WIT_TO_PY = {
    "low-threshold": "low_threshold",
    "high-threshold": "high_threshold",
    "window-ms": "sliding_window",
    "hold-ms": "hold",
    "batch-interval-ms": "batch_interval",
    "batch-max-keys": "batch_max_keys",
    "batch-max-bytes": "batch_max_bytes",
    "initial-strategy": "strategy",
}

@dataclass(frozen=True)
class CacheConfig:
    """Every setting of :class:`~aci_cache.AdaptiveCache`, with its default.

    The first nine are the original aci-cache 0.1.x settings, same names, same defaults; the rest
    are new. Durations are seconds, rates writes per second over the whole fleet.
    """

    #: Above this fleet write rate the strategy is ``eager``.
    high_threshold: float = 50.0
    #: Fleet writes/s up to which writes need no prompt invalidation: the bundled ``adaptive``
    #: policy picks ``ttl`` below a quarter of it, ``batched`` (full batches) up to it and on to
    #: ``high_threshold``.
    low_threshold: float = 10.0
    #: Redis TTL that ``set`` gives a key when the call passes none.
    default_ttl: float = 10
    #: Longest time a written key waits in a batch before its invalidation is published.
    batch_interval: float = 2.5
    #: Controller liveness: followers that hear no controller for this long follow ``eager``; the
    #: ``auto`` role's lease lasts this long.
    controller_interval: float = 3.0
    #: Span of the sliding window over which the write rate is measured.
    sliding_window: float = 5.0
    #: First part of every channel name (and of stored keys when there is a namespace).
    channel_prefix: str = "aci"
    #: Keys are stored as ``<prefix>:<namespace>:<key>``; channels are ``<prefix>:<namespace>:*``.
    namespace: Optional[str] = None
    #: True: controller; False: follower; None (not given): ``auto``, a Redis lease elects one.
    is_controller: Optional[bool] = None

    #: Longest life of an entry in the local (L1) cache; also capped by the key's Redis TTL.
    local_ttl: float = 5.0
    #: L1 capacity in entries (least recently used go first).
    local_max_entries: int = 10_000
    #: L1 capacity in bytes (keys plus values).
    local_max_bytes: int = 64 << 20
    #: Period of the background tick that feeds the policy and publishes batches and heartbeats.
    tick_interval: float = 0.25
    #: ``auto``, ``controller`` or ``follower``; overrides ``is_controller`` when given.
    role: Optional[str] = None
    #: Force one strategy (uses the ``fixed`` policy); None lets the adaptive policy decide.
    strategy: Optional[str] = None
    #: A policy component to use instead of the shipped one: path, bytes, or a shipped name.
    policy: Union[str, os.PathLike, bytes, None] = None
    #: Hysteresis before moving to a lower strategy (None: the policy's default, 3 s).
    hold: Optional[float] = None
    #: A batch is published as soon as it holds this many keys (None: the policy's default).
    batch_max_keys: Optional[int] = None
    #: ... or this many bytes of keys (None: the policy's default).
    batch_max_bytes: Optional[int] = None
    #: This instance's id in messages: 1-64 of ``[A-Za-z0-9_-]`` (None: 12 random hex chars).
    instance_id: Optional[str] = None
    #: How long the constructor waits for the Pub/Sub subscription (reads bypass L1 until then).
    connect_timeout: float = 2.0
    #: Subscription silence after which the link is presumed dead (docs/WIRE.md 5).
    liveness_timeout: float = 3.0
    #: Subscription lag above which L1 stops serving until it is under half of it (WIRE.md 5).
    max_lag: float = 0.5
    #: Longest a Redis command of the cache may take (socket timeout, no retries): on a frozen or
    #: unreachable Redis a call fails within it (or is served from L1).
    command_timeout: float = 2.0
    #: How long stop() waits for the last publish (a frozen Redis cannot hold it longer).
    stop_timeout: float = 5.0
    #: Follow policy rollouts (docs/WIRE.md 9): subscribe to ``P:policy``, publish a status
    #: record, run pushed policies this instance trusts. False: none of it (local policy only).
    follow_rollouts: bool = True
    #: ed25519 public key (64 lowercase hex) whose signatures approve pushed policies.
    policy_public_key: Optional[str] = None
    #: sha256 hashes (64 lowercase hex) of components allowed to run without a signature (with
    #: this instance's own config). Neither this nor a key: pushes are ignored (and reported).
    policy_allow_hashes: Optional[Tuple[str, ...]] = None
    #: Faults of a pushed policy after which this instance rolls the fleet back from it.
    policy_rollback_faults: int = 3

    def __post_init__(self) -> None:
        self.validate()

    # -- the original's helpers -------------------------------------------------------------------

    @property
    def _p(self) -> str:
        return self.channel_prefix if self.namespace is None else f"{self.channel_prefix}:{self.namespace}"

    @property
    def invalidation_channel(self) -> str:
        return f"{self._p}:invalidation"

    @property
    def strategy_channel(self) -> str:
        return f"{self._p}:strategy"

    def make_key(self, key: str) -> str:
        """The Redis key of a user key: ``<prefix>:<namespace>:<key>`` with a namespace, else the key."""
        return wire.Names(self.channel_prefix, self.namespace, self.instance_id or "x").redis_key(key)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CacheConfig":
        """Settings from keyword arguments; ``config=CacheConfig(...)`` gives a base that the
        other keywords override."""
        base = kwargs.pop("config", None)
        if base is not None:
            if not isinstance(base, CacheConfig):
                raise TypeError(f"config must be a CacheConfig, got {type(base).__name__}")
            kwargs = {**{f.name: getattr(base, f.name) for f in fields(cls)}, **kwargs}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown AdaptiveCache settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**kwargs)

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""

        def number(name: str, *, positive: bool = False, nonneg: bool = False, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigValueError(name, f"must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ConfigValueError(name, f"must be finite, got {v!r}")
            if positive and v <= 0:
                raise ConfigValueError(name, f"must be > 0, got {v!r}")
            if nonneg and v < 0:
                raise ConfigValueError(name, f"must be >= 0, got {v!r}")

        def integer(name: str, *, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigValueError(name, f"must be an integer, got {v!r}")
            if v <= 0:
                raise ConfigValueError(name, f"must be > 0, got {v!r}")

        number("high_threshold", nonneg=True)
        number("low_threshold", nonneg=True)
        if self.low_threshold >= self.high_threshold:
            raise ConfigValueError("low_threshold", f"({self.low_threshold}) must be strictly less than "
                                                    f"high_threshold ({self.high_threshold})")
        number("default_ttl", positive=True)
        number("batch_interval", positive=True)
        number("controller_interval", positive=True)
        number("sliding_window", positive=True)
        try:
            wire.Names(self.channel_prefix, self.namespace, "x" if self.instance_id is None else self.instance_id)
        except wire.NameError_ as e:
            raise ConfigValueError(e.field, e.message) from None
        if self.is_controller is not None and not isinstance(self.is_controller, bool):
            raise ConfigValueError("is_controller", f"must be True, False or None, got {self.is_controller!r}")
        number("local_ttl", positive=True)
        integer("local_max_entries")
        integer("local_max_bytes")
        number("tick_interval", positive=True)
        if self.role is not None and self.role not in ROLES:
            raise ConfigValueError("role", f"must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ConfigValueError("strategy", f"must be one of {', '.join(STRATEGIES)} or None, got {self.strategy!r}")
        number("hold", nonneg=True, optional=True)
        integer("batch_max_keys", optional=True)
        integer("batch_max_bytes", optional=True)
        number("connect_timeout", nonneg=True)
        number("liveness_timeout", positive=True)
        number("max_lag", positive=True)
        number("command_timeout", positive=True)
        number("stop_timeout", positive=True)
        if not isinstance(self.follow_rollouts, bool):
            raise ConfigValueError("follow_rollouts", f"must be True or False, got {self.follow_rollouts!r}")
        integer("policy_rollback_faults")
        if self.policy_allow_hashes is not None:
            if isinstance(self.policy_allow_hashes, (str, bytes)):
                raise ConfigValueError("policy_allow_hashes", "must be a sequence of hashes, not one string")
            object.__setattr__(self, "policy_allow_hashes", tuple(self.policy_allow_hashes))
        from .rollout import Trust

        Trust(self.policy_public_key, self.policy_allow_hashes)  # ConfigValueError naming the field

    # -- derived -------------------------------------------------------------------------------

    @property
    def effective_role(self) -> str:
        if self.role is not None:
            return self.role
        if self.is_controller is None:
            return "auto"
        return "controller" if self.is_controller else "follower"

    def policy_overrides(self) -> Dict[str, Any]:
        """The policy config fields these settings set (WIT names)."""
        out: Dict[str, Any] = {
            "low-threshold": float(self.low_threshold),
            "high-threshold": float(self.high_threshold),
            "window-ms": _ms(self.sliding_window),
            "batch-interval-ms": _ms(self.batch_interval),
        }
        if self.hold is not None:
            out["hold-ms"] = _ms(self.hold)
        if self.batch_max_keys is not None:
            out["batch-max-keys"] = self.batch_max_keys
        if self.batch_max_bytes is not None:
            out["batch-max-bytes"] = self.batch_max_bytes
        if self.strategy is not None:
            out["initial-strategy"] = self.strategy
        return out


def _ms(seconds: float) -> int:
    v = int(round(seconds * 1000))
    return max(v, 1) if seconds > 0 else v
