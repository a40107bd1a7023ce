package policy

import (
	"fmt"
)

// Strategy is how the fleet propagates a write to the other instances' local caches
// (WIT enum `strategy`). The numeric values are the WIT case indices, which is what crosses
// the component boundary, so they must not be reordered.
type Strategy uint8

const (
	// StrategyTTL sends no messages; other instances keep their copy until its local TTL
	// expires.
	StrategyTTL Strategy = iota
	// StrategyBatched buffers written keys in the engine; the host publishes them together
	// when PendingBatch returns them.
	StrategyBatched
	// StrategyEager has the host publish one invalidation per write, at once.
	StrategyEager
)

// strategyNames are the WIT case names, which are also the names used on the wire and in
// the trace vectors.
var strategyNames = [...]string{"ttl", "batched", "eager"}

// String returns the WIT case name ("ttl", "batched" or "eager").
func (s Strategy) String() string {
	if s.valid() {
		return strategyNames[s]
	}
	return fmt.Sprintf("Strategy(%d)", uint8(s))
}

func (s Strategy) valid() bool { return int(s) < len(strategyNames) }

// ParseStrategy is the inverse of Strategy.String.
func ParseStrategy(name string) (Strategy, error) {
	for i, n := range strategyNames {
		if n == name {
			return Strategy(i), nil
		}
	}
	return 0, fmt.Errorf("policy: unknown strategy %q (want ttl, batched or eager)", name)
}

// MarshalText lets a Strategy appear by name in JSON, YAML or flag values.
func (s Strategy) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("policy: invalid strategy %d", uint8(s))
	}
	return []byte(strategyNames[s]), nil
}

// UnmarshalText accepts the names produced by MarshalText.
func (s *Strategy) UnmarshalText(text []byte) error {
	v, err := ParseStrategy(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Config holds the engine's tunables (WIT record `config`). Durations are milliseconds and
// rates are fleet writes per second. The integer fields are signed, as in the WIT, so that a
// negative value read from a host's configuration reaches the engine and comes back as a
// ConfigError naming the field.
type Config struct {
	LowThreshold    float64  // below this rate the target is ttl
	HighThreshold   float64  // above this rate the target is eager
	WindowMs        int32    // span of the rate's sliding window
	HoldMs          int32    // how long a lower target must last before moving down
	BatchIntervalMs int32    // a batch is due this long after its first key
	BatchMaxKeys    int32    // a batch is due at this many distinct keys
	BatchMaxBytes   int32    // a batch is due at this many bytes of keys
	InitialStrategy Strategy // the strategy before anything is measured
}

// ConfigError is why Configure refused a config (WIT record `config-error`).
type ConfigError struct {
	// Field is the offending field by its WIT name, e.g. "low-threshold".
	Field string
	// Message says what is wrong with the value.
	Message string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("policy: invalid config: %s %s", e.Field, e.Message)
}

// PolicyInfo names a policy (WIT record `policy-info`).
type PolicyInfo struct {
	Name    string // e.g. "adaptive" or "fixed"
	Version string // semantic version of the policy's logic
}

// Batch is the keys to publish in one invalidation message (WIT record `batch`).
type Batch struct {
	// Keys are distinct, in the order they were first buffered.
	Keys []string
	// FlushAll means keys were dropped (or lost), so every instance must drop its whole
	// local cache for the namespace.
	FlushAll bool
}

// Snapshot is everything a host observes at one instant (WIT record `snapshot`).
type Snapshot struct {
	Strategy     Strategy
	WriteRate    float64 // fleet writes per second over the window
	BufferedKeys uint32  // keys buffered for the next batch
	BatchDue     bool    // PendingBatch at the same time would return keys or FlushAll
	Switches     uint64  // strategy changes since the instance started
	Following    bool    // true while following a controller
}
