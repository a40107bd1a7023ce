"""aci-cache: adaptive cache invalidation for Redis."""

__version__ = "0.2.0"

from .engine import ConfigError as EngineConfigError, Engine, EngineError, EngineFault, PolicyLoadError

__all__ = ["Engine", "EngineError", "EngineFault", "EngineConfigError", "PolicyLoadError", "__version__"]
