package acicache

import (
	"log/slog"
	"time"

	"github.com/aci-cache/aci-cache/go/policy"
)

// Role is an instance's part in the fleet (docs/WIRE.md section 3).
type Role int

const (
	// RoleAuto (default): whoever holds the lease <prefix>::<namespace>:controller leads.
	RoleAuto Role = iota
	// RoleController always leads (no lease); for explicit setups and upgrades.
	RoleController
	// RoleFollower never leads.
	RoleFollower
)

func (r Role) String() string {
	switch r {
	case RoleAuto:
		return "auto"
	case RoleController:
		return "controller"
	case RoleFollower:
		return "follower"
	}
	return "Role(?)"
}

// Option configures New. The defaults need no tuning.
type Option func(*settings)

type settings struct {
	prefix            string
	namespace         string
	hasNamespace      bool
	instanceID        string
	role              Role
	fixed             *policy.Strategy
	policyPath        string
	policyWasm        []byte
	defaultTTL        time.Duration
	localTTL          time.Duration
	tick              time.Duration
	controllerTimeout time.Duration
	livenessTimeout   time.Duration
	maxLag            time.Duration
	l1MaxEntries      int
	l1MaxBytes        int64
	callTimeout       time.Duration
	logger            *slog.Logger
	clusterPubSub     ClusterPubSub

	// docs/WIRE.md 9: policy rollouts.
	noRollouts     bool
	publicKey      string
	hasPublicKey   bool
	allowHashes    []string
	rollbackFaults int
}

func defaults() settings {
	return settings{
		prefix:            "aci",
		role:              RoleAuto,
		defaultTTL:        10 * time.Second,
		localTTL:          5 * time.Second,
		tick:              250 * time.Millisecond,
		controllerTimeout: 3 * time.Second,
		livenessTimeout:   3 * time.Second,
		maxLag:            500 * time.Millisecond,
		l1MaxEntries:      100_000,
		l1MaxBytes:        64 << 20,
		logger:            slog.Default(),
		rollbackFaults:    3,
	}
}

// ClusterPubSub is how fleet messages travel when the client is a *redis.ClusterClient
// (docs/WIRE.md 10.1). Every member of a fleet must use the same mode: sharded and classic
// subscribers do not hear each other.
type ClusterPubSub int

const (
	// ClusterSharded (default): SPUBLISH/SSUBSCRIBE (Redis >= 7.0, Valkey): only the shard that
	// owns the slot of the namespace's channels handles its messages.
	ClusterSharded ClusterPubSub = iota
	// ClusterClassic: PUBLISH/SUBSCRIBE on the same braced channel names, for servers without
	// sharded Pub/Sub; the cluster bus copies every message to every node.
	ClusterClassic
)

func (m ClusterPubSub) String() string {
	switch m {
	case ClusterSharded:
		return "sharded"
	case ClusterClassic:
		return "classic"
	}
	return "ClusterPubSub(?)"
}

// WithClusterPubSub chooses sharded (default) or classic Pub/Sub on a Redis Cluster. It has no
// effect on other clients.
func WithClusterPubSub(m ClusterPubSub) Option { return func(s *settings) { s.clusterPubSub = m } }

// WithNamespace stores keys as <prefix>:<ns>:<key> and scopes every channel to the namespace.
// ns must match ^[A-Za-z0-9._-]{1,64}$.
func WithNamespace(ns string) Option {
	return func(s *settings) { s.namespace, s.hasNamespace = ns, true }
}

// WithChannelPrefix replaces the default prefix "aci".
func WithChannelPrefix(p string) Option { return func(s *settings) { s.prefix = p } }

// WithInstanceID sets the instance id (default: 12 random hex characters).
func WithInstanceID(id string) Option { return func(s *settings) { s.instanceID = id } }

// WithRole sets the fleet role (default RoleAuto).
func WithRole(r Role) Option { return func(s *settings) { s.role = r } }

// WithFixedStrategy runs the bundled "fixed" policy with this strategy instead of "adaptive".
func WithFixedStrategy(st policy.Strategy) Option { return func(s *settings) { s.fixed = &st } }

// WithPolicyFile loads the policy component from path instead of the bundled one.
func WithPolicyFile(path string) Option { return func(s *settings) { s.policyPath = path } }

// WithPolicyBytes uses this policy component instead of the bundled one.
func WithPolicyBytes(wasm []byte) Option { return func(s *settings) { s.policyWasm = wasm } }

// WithDefaultTTL is the Redis TTL of Set when it is given 0 (default 10 s).
func WithDefaultTTL(d time.Duration) Option { return func(s *settings) { s.defaultTTL = d } }

// WithLocalTTL is the longest an L1 entry lives (default 5 s); never past the Redis TTL.
func WithLocalTTL(d time.Duration) Option { return func(s *settings) { s.localTTL = d } }

// WithTick sets the background tick (default 250 ms).
func WithTick(d time.Duration) Option { return func(s *settings) { s.tick = d } }

// WithControllerTimeout sets the lease length and a follower's patience (default 3 s).
func WithControllerTimeout(d time.Duration) Option {
	return func(s *settings) { s.controllerTimeout = d }
}

// WithLivenessTimeout: subscription silence before it is presumed dead (default 3 s).
func WithLivenessTimeout(d time.Duration) Option { return func(s *settings) { s.livenessTimeout = d } }

// WithMaxLag: subscription lag above which L1 stops serving (default 500 ms).
func WithMaxLag(d time.Duration) Option { return func(s *settings) { s.maxLag = d } }

// WithL1Size bounds the near cache by entries and bytes (default 100,000 and 64 MiB).
func WithL1Size(maxEntries int, maxBytes int64) Option {
	return func(s *settings) { s.l1MaxEntries, s.l1MaxBytes = maxEntries, maxBytes }
}

// WithPolicyCallTimeout sets the CPU bound of each policy call (default
// policy.DefaultCallTimeout, 50 ms).
func WithPolicyCallTimeout(d time.Duration) Option { return func(s *settings) { s.callTimeout = d } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// WithPolicyPublicKey makes the cache run pushed policies (docs/WIRE.md 9) whose rollout
// record is signed by this ed25519 key: 64 lowercase hex characters, the 32-byte public key of
// RFC 8032 (as `aci policy keygen` writes it to FILE.pub).
func WithPolicyPublicKey(hexKey string) Option {
	return func(s *settings) { s.publicKey, s.hasPublicKey = hexKey, true }
}

// WithPolicyAllowHashes makes the cache run pushed policies with these component hashes
// (SHA-256, 64 lowercase hex each) without a signature, with the cache's own config.
func WithPolicyAllowHashes(hashes ...string) Option {
	return func(s *settings) { s.allowHashes = append(s.allowHashes, hashes...) }
}

// WithPolicyRollbackFaults sets how many faults of a pushed policy (since it was swapped in)
// make this instance revert and roll the fleet back from it (default 3; docs/WIRE.md 9.7).
func WithPolicyRollbackFaults(n int) Option { return func(s *settings) { s.rollbackFaults = n } }

// WithoutPolicyRollouts opts out of docs/WIRE.md section 9: no subscription to P:policy, no
// status record, the local policy always. By default a cache follows rollouts, and without
// WithPolicyPublicKey or WithPolicyAllowHashes refuses every pushed policy (reporting it).
func WithoutPolicyRollouts() Option { return func(s *settings) { s.noRollouts = true } }

func (s *settings) validate() error {
	pos := func(field string, d time.Duration) error {
		if d <= 0 {
			return &ConfigError{Field: field, Value: d.String(), Reason: "must be greater than zero"}
		}
		return nil
	}
	for _, c := range []struct {
		f string
		d time.Duration
	}{{"default_ttl", s.defaultTTL}, {"local_ttl", s.localTTL}, {"tick", s.tick},
		{"controller_timeout", s.controllerTimeout}, {"liveness_timeout", s.livenessTimeout}, {"max_lag", s.maxLag}} {
		if err := pos(c.f, c.d); err != nil {
			return err
		}
	}
	if s.callTimeout < 0 {
		return &ConfigError{Field: "policy_call_timeout", Value: s.callTimeout.String(), Reason: "must not be negative"}
	}
	if s.l1MaxEntries <= 0 {
		return &ConfigError{Field: "l1_max_entries", Value: itoa(int64(s.l1MaxEntries)), Reason: "must be greater than zero"}
	}
	if s.l1MaxBytes <= 0 {
		return &ConfigError{Field: "l1_max_bytes", Value: itoa(s.l1MaxBytes), Reason: "must be greater than zero"}
	}
	if s.role < RoleAuto || s.role > RoleFollower {
		return &ConfigError{Field: "role", Value: s.role.String(), Reason: "must be auto, controller or follower"}
	}
	if s.fixed != nil && s.fixed.String()[0] == 'S' {
		return &ConfigError{Field: "strategy", Value: s.fixed.String(), Reason: "must be ttl, batched or eager"}
	}
	if s.clusterPubSub != ClusterSharded && s.clusterPubSub != ClusterClassic {
		return &ConfigError{Field: "cluster_pubsub", Value: s.clusterPubSub.String(), Reason: "must be sharded or classic"}
	}
	if s.rollbackFaults < 1 {
		return &ConfigError{Field: "policy_rollback_faults", Value: itoa(int64(s.rollbackFaults)), Reason: "must be at least 1"}
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	return nil
}
