package acicache

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"filippo.io/edwards25519"

	"github.com/aci-cache/aci-cache/go/policy"
)

// The data of docs/WIRE.md section 9 (policy rollout): the announcement, the rollout record,
// trust and signatures, config overrides. Everything here is pure: rollout.go does the I/O.

// Limits of section 9.
const (
	maxComponentBytes = 4 << 20 // 9.1: a larger component is refused
	maxConfigBytes    = 4096    // 9.2
	maxCanary         = 1000    // 9.2
	signingDomain     = "aci-cache policy v1"
)

// casLua is the compare-and-set every writer of the record uses (9.2), byte for byte.
const casLua = `local cur = redis.call('HGET', KEYS[1], 'rollout')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`

// decodePolicy classifies a payload from P:policy (9.3): the checks of 2.3 in order (size,
// JSON, depth, object), then any action but "policy" is unknown-action, and a missing or
// invalid rollout or source is bad-field.
func decodePolicy(payload []byte) (rollout uint64, source string, bad Malformed) {
	if len(payload) > maxPayload {
		return 0, "", MalformedTooLarge
	}
	if !utf8.Valid(payload) || tooDeep(payload) || !json.Valid(payload) {
		return 0, "", MalformedNotJSON
	}
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return 0, "", MalformedNotObject
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil {
		return 0, "", MalformedNotJSON
	}
	for k, v := range obj {
		if string(v) == "null" {
			delete(obj, k)
		}
	}
	raw, ok := obj["action"]
	var name string
	if !ok || !isString(raw) || json.Unmarshal(raw, &name) != nil {
		return 0, "", MalformedBadField
	}
	if name != "policy" {
		return 0, "", MalformedUnknownAction
	}
	if source, ok = idField(obj, "source", true); !ok {
		return 0, "", MalformedBadField
	}
	if _, ok = idField(obj, "epoch", false); !ok {
		return 0, "", MalformedBadField
	}
	if _, ok = numberField(obj, "timestamp"); !ok {
		return 0, "", MalformedBadField
	}
	if rollout, _, ok = intField(obj, "rollout", 1, maxSafeInt, true); !ok {
		return 0, "", MalformedBadField
	}
	return rollout, source, ""
}

// announcement is this host's policy announcement (9.3), in its own encoding.
func (s *sender) announcement(rollout uint64) []byte {
	return s.finish(appendUint(s.start(nil, "policy"), "rollout", rollout))
}

// target is what an instance runs: a component by hash (empty: its local policy), config
// overrides (9.4) and the signature that approves both (9.5).
type target struct {
	SHA256 string `json:"sha256"`
	Config string `json:"config"`
	Sig    string `json:"sig"`
}

func (t target) local() bool { return t.SHA256 == "" }

// same: the same component and config (the signature does not change what runs).
func (t target) same(o target) bool {
	return t.SHA256 == o.SHA256 && (t.local() || t.Config == o.Config)
}

// record is the rollout record K policy:current (9.2), checked.
type record struct {
	rollout  uint64
	target   target
	previous target
	canary   []string
	name     string
	version  string
}

// targetFor is what instance id runs under the record: the target if there is no canary or
// id is in it, else previous.
func (r *record) targetFor(id string) target {
	if len(r.canary) == 0 {
		return r.target
	}
	for _, c := range r.canary {
		if c == id {
			return r.target
		}
	}
	return r.previous
}

// recordError names the first invalid field of a record; the whole record is refused.
type recordError struct{ field string }

func (e *recordError) Error() string { return "malformed record: " + e.field }

// isLowerHex: exactly n lowercase hex characters (upper case is refused: section 9).
func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func isHash(s string) bool { return isLowerHex(s, 64) }

// parseRollout: a decimal integer 1 .. 2^53-1, written canonically (no sign, no leading zero:
// the compare-and-set compares the text).
func parseRollout(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 16 || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n < 1 || n > maxSafeInt {
		return 0, false
	}
	return n, true
}

// configFieldOK: empty, or a JSON object of at most 4096 bytes.
func configFieldOK(s string) bool {
	if s == "" {
		return true
	}
	if len(s) > maxConfigBytes || !json.Valid([]byte(s)) {
		return false
	}
	var obj map[string]json.RawMessage
	return json.Unmarshal([]byte(s), &obj) == nil && obj != nil
}

// parseRecord checks every field of an HGETALL; nil, nil when there is no record.
func parseRecord(f map[string]string) (*record, error) {
	if len(f) == 0 {
		return nil, nil
	}
	for k, v := range f {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			name := k
			if !utf8.ValidString(k) {
				name = "record"
			}
			return nil, &recordError{name}
		}
	}
	r := &record{}
	var ok bool
	if r.rollout, ok = parseRollout(f["rollout"]); !ok {
		return nil, &recordError{"rollout"}
	}
	tgt := func(h, c, s string) (target, error) {
		t := target{SHA256: f[h], Config: f[c], Sig: f[s]}
		if t.SHA256 != "" && !isHash(t.SHA256) {
			return t, &recordError{h}
		}
		if !configFieldOK(t.Config) {
			return t, &recordError{c}
		}
		if t.Sig != "" && !isLowerHex(t.Sig, 128) {
			return t, &recordError{s}
		}
		return t, nil
	}
	var err error
	if r.target, err = tgt("sha256", "config", "sig"); err != nil {
		return nil, err
	}
	if r.previous, err = tgt("previous", "previous_config", "previous_sig"); err != nil {
		return nil, err
	}
	if c := f["canary"]; c != "" {
		// Counted before splitting: the split is then bounded too.
		if strings.Count(c, ",") >= maxCanary {
			return nil, &recordError{"canary"}
		}
		r.canary = strings.Split(c, ",")
		for _, id := range r.canary {
			if !nameOK(id, false) {
				return nil, &recordError{"canary"}
			}
		}
	}
	for _, tf := range []struct {
		name string
		max  int
	}{{"name", 64}, {"version", 64}, {"by", 200}, {"reason", 200}} {
		if utf8.RuneCountInString(f[tf.name]) > tf.max {
			return nil, &recordError{tf.name}
		}
	}
	r.name, r.version = f["name"], f["version"]
	return r, nil
}

// signedMessage is what a signature covers (9.5).
func signedMessage(prefix, namespace, sha256, config string) []byte {
	return []byte(signingDomain + "\n" + prefix + "\n" + namespace + "\n" + sha256 + "\n" + config)
}

// trust is an ed25519 public key and/or an allow-list of hashes (9.5).
type trust struct {
	key   ed25519.PublicKey // nil: none
	allow map[string]bool
}

func newTrust(publicKey string, hasKey bool, allow []string) (*trust, error) {
	t := &trust{allow: map[string]bool{}}
	if hasKey {
		if !isLowerHex(publicKey, 64) {
			return nil, &ConfigError{Field: "policy_public_key", Value: clip(publicKey, 80),
				Reason: "must be 64 lowercase hex characters (an ed25519 public key)"}
		}
		b, _ := hex.DecodeString(publicKey)
		if smallOrder(b) {
			return nil, &ConfigError{Field: "policy_public_key", Value: publicKey, Reason: "is not a valid ed25519 public key (weak or not a point)"}
		}
		t.key = ed25519.PublicKey(b)
	}
	for _, h := range allow {
		if !isHash(h) {
			return nil, &ConfigError{Field: "policy_allow_hashes", Value: clip(h, 80),
				Reason: "each must be 64 lowercase hex characters (a SHA-256)"}
		}
		t.allow[h] = true
	}
	return t, nil
}

// smallOrder: b is not the encoding of a point, or encodes one of small order. ed25519-dalek's
// verify_strict, which the Rust host uses (and libsodium, the Python host's), refuses such
// public keys and signature R values; crypto/ed25519 alone accepts them.
func smallOrder(b []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		return true
	}
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
}

func (t *trust) kind() string {
	switch {
	case t.key != nil && len(t.allow) > 0:
		return "key+allow-list"
	case t.key != nil:
		return "key"
	case len(t.allow) > 0:
		return "allow-list"
	}
	return "none"
}

// check returns "" when tg may run, else the refusal reason of 9.6 step 1. A target passes
// if it is local, or its hash is allow-listed with an empty config, or the key verifies its
// signature (an allow-listed hash with a config override needs the signature).
func (t *trust) check(prefix, namespace string, tg target) string {
	if tg.local() {
		return ""
	}
	if t.key == nil && len(t.allow) == 0 {
		return "no policy trust configured (policy_public_key or policy_allow_hashes)"
	}
	listed := t.allow[tg.SHA256]
	if listed && tg.Config == "" {
		return ""
	}
	if t.key == nil || (listed && tg.Sig == "") {
		if listed {
			return "allow-listed hash pushed with a config override (only a signed push may override the config)"
		}
		return "not in the allow-list"
	}
	if tg.Sig == "" {
		return "unsigned: this instance requires a signature by its policy_public_key"
	}
	sig, err := hex.DecodeString(tg.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize || smallOrder(sig[:32]) ||
		!ed25519.Verify(t.key, signedMessage(prefix, namespace, tg.SHA256, tg.Config), sig) {
		return "bad signature: not made by this instance's policy_public_key for this namespace"
	}
	return ""
}

// applyOverrides puts a record's config overrides (9.4) on base. The error names the field:
// "config: <field>: ...".
func applyOverrides(base policy.Config, config string) (policy.Config, error) {
	c := base
	if config == "" {
		return c, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(config), &m); err != nil || m == nil {
		return c, fmt.Errorf("config: not a JSON object")
	}
	bad := func(k, what string) error { return fmt.Errorf("config: %s: %s", clip(k, 64), what) }
	float := func(k string, raw json.RawMessage) (float64, error) {
		if !isNumber(raw) {
			return 0, bad(k, "must be a finite number")
		}
		v, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
			return 0, bad(k, "must be a finite number")
		}
		return v, nil
	}
	integer := func(k string, raw json.RawMessage) (int32, error) {
		v, err := float(k, raw)
		if err != nil || v != math.Trunc(v) || v < math.MinInt32 || v > math.MaxInt32 {
			return 0, bad(k, "must be a whole number in the s32 range")
		}
		return int32(v), nil
	}
	// In a fixed order, so that the field named is the same whatever the map's order.
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		raw := m[k]
		var err error
		switch k {
		case "low-threshold":
			c.LowThreshold, err = float(k, raw)
		case "high-threshold":
			c.HighThreshold, err = float(k, raw)
		case "window-ms":
			c.WindowMs, err = integer(k, raw)
		case "hold-ms":
			c.HoldMs, err = integer(k, raw)
		case "batch-interval-ms":
			c.BatchIntervalMs, err = integer(k, raw)
		case "batch-max-keys":
			c.BatchMaxKeys, err = integer(k, raw)
		case "batch-max-bytes":
			c.BatchMaxBytes, err = integer(k, raw)
		case "initial-strategy":
			var s string
			var st policy.Strategy
			if !isString(raw) || json.Unmarshal(raw, &s) != nil {
				err = bad(k, "must be ttl, batched or eager")
			} else if st, err = policy.ParseStrategy(s); err != nil {
				err = bad(k, "must be ttl, batched or eager")
			} else {
				c.InitialStrategy = st
			}
		default:
			err = bad(k, "not a field of the policy config")
		}
		if err != nil {
			return base, err
		}
	}
	return c, nil
}

// clip is at most n characters of s (never splitting UTF-8).
func clip(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}
