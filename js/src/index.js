// aci-cache for Node.js: the original package's API (AdaptiveCache over an ioredis client)
// with a real near cache and the fleet protocol of docs/WIRE.md v2, plus the policy engine.
export { AdaptiveCache, CacheStateError } from './cache.js';
export { CacheConfigError, DEFAULTS, Names } from './config.js';
export { PolicyFault, PolicyRuntime } from './engine.js';
export { ConfigError, InvalidComponent, Policy, PolicyModule, PolicyTrap, configFromWire, configToWire, loadComponent, loadPolicy, policyDir, policyModule } from './policy.js';
export { LossDetector, Sender, decode } from './wire.js';
