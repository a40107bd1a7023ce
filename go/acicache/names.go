package acicache

import (
	"strings"
	"unicode/utf8"
)

// names are the Redis key and channel names of one (prefix, namespace, instance), per
// docs/WIRE.md section 1.
type names struct {
	prefix, namespace string
	p                 string // "<prefix>" or "<prefix>:<namespace>"
	keyPrefix         string // "P:" with a namespace, "" without
	protocolPrefix    string // "<prefix>::"
	invalidation      string
	strategy          string
	reports           string
	liveness          string
	lease             string
	policy            string // channel P:policy (docs/WIRE.md 9)
	k                 string // K of docs/WIRE.md 9: "<prefix>::<namespace>:" or "<prefix>::"
}

// nameOK is ^[A-Za-z0-9._-]{1,64}$ (dot allowed: prefix and namespace) or
// ^[A-Za-z0-9_-]{1,64}$ (no dot: instance ids, sources, epochs), checked byte by byte.
func nameOK(s string, dot bool) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		case c == '.' && dot:
		default:
			return false
		}
	}
	return true
}

// newNames builds the names; braced (a Redis Cluster, docs/WIRE.md 10.1) puts every channel of
// the namespace in the one slot of P: "{P}:invalidation" and so on. Keys are never braced.
func newNames(prefix, namespace string, hasNamespace, braced bool, id string) (*names, error) {
	if !nameOK(prefix, true) {
		return nil, &ConfigError{Field: "channel_prefix", Value: prefix, Reason: "must be 1-64 of [A-Za-z0-9._-]"}
	}
	if hasNamespace && !nameOK(namespace, true) {
		return nil, &ConfigError{Field: "namespace", Value: namespace, Reason: "must be 1-64 of [A-Za-z0-9._-]"}
	}
	if !nameOK(id, false) {
		return nil, &ConfigError{Field: "instance_id", Value: id, Reason: "must be 1-64 of [A-Za-z0-9_-]"}
	}
	n := &names{prefix: prefix, namespace: namespace, p: prefix, protocolPrefix: prefix + "::"}
	n.k = prefix + "::"
	if hasNamespace {
		n.p = prefix + ":" + namespace
		n.keyPrefix = n.p + ":"
		n.k = prefix + "::" + namespace + ":"
	}
	n.lease = n.k + "controller"
	ch := n.p
	if braced {
		ch = "{" + n.p + "}"
	}
	n.policy = ch + ":policy"
	n.invalidation = ch + ":invalidation"
	n.strategy = ch + ":strategy"
	n.reports = ch + ":reports"
	n.liveness = ch + ":liveness:" + id
	return n, nil
}

// checkKey refuses what cannot be a user key: invalid UTF-8 (it could not travel in a JSON
// invalidation, so other instances would never drop it) and, without a namespace, the
// protocol's own key space.
func (n *names) checkKey(key string) error {
	if !utf8.ValidString(key) {
		return &ConfigError{Field: "key", Value: key, Reason: "not valid UTF-8"}
	}
	if n.keyPrefix == "" && strings.HasPrefix(key, n.protocolPrefix) {
		return &ConfigError{Field: "key", Value: key, Reason: "reserved: starts with " + n.protocolPrefix}
	}
	return nil
}

func (n *names) redisKey(key string) string {
	if n.keyPrefix == "" {
		return key
	}
	return n.keyPrefix + key
}

// userKey maps a Redis key from an invalidation back to the L1 key; ok is false for keys
// outside this namespace.
func (n *names) userKey(rkey string) (string, bool) {
	if n.keyPrefix == "" {
		return rkey, true
	}
	if strings.HasPrefix(rkey, n.keyPrefix) {
		return rkey[len(n.keyPrefix):], true
	}
	return "", false
}
