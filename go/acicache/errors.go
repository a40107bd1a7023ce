package acicache

import (
	"errors"
	"fmt"
)

// ErrInvalid is matched (errors.Is) by every *ConfigError: a bad option at New, or a key that
// cannot be used (docs/WIRE.md section 1).
var ErrInvalid = errors.New("acicache: invalid")

// ErrClosed is returned by operations on a Cache after Close.
var ErrClosed = errors.New("acicache: cache closed")

// ConfigError names the option (or "key") whose value was refused and says why.
// Field uses the protocol's snake_case names: "namespace", "channel_prefix", "instance_id",
// "key", "tick", "local_ttl", ...
type ConfigError struct {
	Field  string
	Value  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("acicache: invalid %s %q: %s", e.Field, e.Value, e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalid }
