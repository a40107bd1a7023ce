"""aci-cache: adaptive cache invalidation for Redis.

``AdaptiveCache`` wraps a redis-py client with a bounded local (L1) cache kept coherent across a
fleet of instances over Redis Pub/Sub; a WebAssembly policy picks how (``ttl``, ``batched`` or
``eager`` invalidation) from the fleet's measured write rate.
"""

__version__ = "0.2.0"

from .config import CacheConfig, ConfigValueError
from .stats import CacheStats
from .engine import ConfigError as EngineConfigError
from .engine import Engine, EngineError, EngineFault, PolicyLoadError
from ._core import RunningPolicy
from .cache import AdaptiveCache

try:  # redis.asyncio ships with redis-py >= 4.2
    from .aio import AsyncAdaptiveCache
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "AdaptiveCache",
    "AsyncAdaptiveCache",
    "CacheConfig",
    "CacheStats",
    "ConfigValueError",
    "Engine",
    "EngineError",
    "EngineFault",
    "EngineConfigError",
    "PolicyLoadError",
    "RunningPolicy",
    "__version__",
]
