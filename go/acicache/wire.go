package acicache

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/aci-cache/aci-cache/go/policy"
)

// Limits of docs/WIRE.md section 2.
const (
	maxPayload    = 1 << 20
	maxKeys       = 100_000
	maxSendKeys   = 10_000
	maxSafeInt    = 1<<53 - 1
	maxReportSize = 1<<32 - 1
)

// Malformed is the kind of a refused message (docs/WIRE.md 2.3), in the order checked.
type Malformed string

const (
	MalformedTooLarge      Malformed = "too-large"
	MalformedNotJSON       Malformed = "not-json"
	MalformedNotObject     Malformed = "not-object"
	MalformedUnknownAction Malformed = "unknown-action"
	MalformedTooManyKeys   Malformed = "too-many-keys"
	MalformedBadField      Malformed = "bad-field"
)

type action uint8

const (
	actInvalidate action = iota + 1
	actFlush
	actMark
	actStrategyUpdate
	actWriteReport
	actHeartbeat
)

var actionNames = map[string]action{
	"invalidate": actInvalidate, "flush": actFlush, "mark": actMark,
	"strategy_update": actStrategyUpdate, "write_report": actWriteReport, "heartbeat": actHeartbeat,
}

var actionStrings = [...]string{"", "invalidate", "flush", "mark", "strategy_update", "write_report", "heartbeat"}

// message is a decoded, validated message. Optional integers carry a has-flag.
type message struct {
	action      action
	source      string
	epoch       string // "" when absent (an empty epoch is refused, so "" means none)
	timestamp   float64
	keys        []string
	strategy    policy.Strategy
	hasStrategy bool
	writeRate   float64
	seq         uint64
	hasSeq      bool
	invalSeq    uint64
	hasInvalSeq bool
	count       uint64
}

// decode classifies payload per docs/WIRE.md 2.3. Work is bounded by the 1 MiB cap, and member
// names are matched exactly (encoding/json's struct decoding would match "Action" too).
func decode(payload []byte) (*message, Malformed) {
	if len(payload) > maxPayload {
		return nil, MalformedTooLarge
	}
	// encoding/json replaces invalid UTF-8 instead of refusing it, so check first.
	if !utf8.Valid(payload) || tooDeep(payload) || !json.Valid(payload) {
		return nil, MalformedNotJSON
	}
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, MalformedNotObject
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil {
		return nil, MalformedNotJSON
	}
	// A member whose value is null is absent (bad-field where the member is required).
	for k, v := range obj {
		if string(v) == "null" {
			delete(obj, k)
		}
	}
	m := &message{}
	rawAction, hasAction := obj["action"]
	var actionName string
	actionOK := hasAction && isString(rawAction) && json.Unmarshal(rawAction, &actionName) == nil
	if actionOK {
		a, known := actionNames[actionName]
		if !known {
			return nil, MalformedUnknownAction
		}
		m.action = a
	}
	var rawKeys []json.RawMessage
	keysIsArray := false
	// Only an invalidate's keys are read (and counted); elsewhere keys is an unlisted member.
	if rk, ok := obj["keys"]; ok && actionOK && m.action == actInvalidate && len(rk) > 0 && rk[0] == '[' {
		if json.Unmarshal(rk, &rawKeys) == nil {
			keysIsArray = true
			if len(rawKeys) > maxKeys {
				return nil, MalformedTooManyKeys
			}
		}
	}
	if !actionOK {
		return nil, MalformedBadField
	}
	var ok bool
	if m.source, ok = idField(obj, "source", true); !ok {
		return nil, MalformedBadField
	}
	if m.epoch, ok = idField(obj, "epoch", false); !ok {
		return nil, MalformedBadField
	}
	if m.timestamp, ok = numberField(obj, "timestamp"); !ok {
		return nil, MalformedBadField
	}
	switch m.action {
	case actInvalidate:
		if !keysIsArray {
			return nil, MalformedBadField
		}
		m.keys = make([]string, len(rawKeys))
		for i, rk := range rawKeys {
			if !isString(rk) || json.Unmarshal(rk, &m.keys[i]) != nil {
				return nil, MalformedBadField
			}
		}
		if m.strategy, m.hasStrategy, ok = strategyField(obj); !ok {
			return nil, MalformedBadField
		}
		if m.seq, m.hasSeq, ok = intField(obj, "seq", 1, maxSafeInt, false); !ok {
			return nil, MalformedBadField
		}
	case actFlush:
		if m.seq, m.hasSeq, ok = intField(obj, "seq", 1, maxSafeInt, false); !ok {
			return nil, MalformedBadField
		}
	case actMark:
		if m.invalSeq, m.hasInvalSeq, ok = intField(obj, "inval_seq", 0, maxSafeInt, true); !ok {
			return nil, MalformedBadField
		}
	case actStrategyUpdate:
		if m.strategy, m.hasStrategy, ok = strategyField(obj); !ok || !m.hasStrategy {
			return nil, MalformedBadField
		}
		if m.writeRate, ok = numberField(obj, "write_rate"); !ok {
			return nil, MalformedBadField
		}
		if m.writeRate < 0 {
			m.writeRate = 0
		}
		if m.invalSeq, m.hasInvalSeq, ok = intField(obj, "inval_seq", 0, maxSafeInt, false); !ok {
			return nil, MalformedBadField
		}
	case actWriteReport:
		if m.count, _, ok = intField(obj, "count", 0, maxReportSize, true); !ok {
			return nil, MalformedBadField
		}
		if m.invalSeq, m.hasInvalSeq, ok = intField(obj, "inval_seq", 0, maxSafeInt, false); !ok {
			return nil, MalformedBadField
		}
	}
	return m, ""
}

// maxDepth: JSON nested deeper than this (arrays and objects, the outer object counting as 1)
// is not-json, so that no parser's recursion depends on a sender.
const maxDepth = 64

// tooDeep scans once for nesting beyond maxDepth; brackets inside strings do not count.
func tooDeep(b []byte) bool {
	depth, inString := 0, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			if depth++; depth > maxDepth {
				return true
			}
		case ']', '}':
			depth--
		}
	}
	return false
}

func isString(raw json.RawMessage) bool { return len(raw) > 0 && raw[0] == '"' }

func isNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'))
}

func idField(obj map[string]json.RawMessage, name string, required bool) (string, bool) {
	raw, present := obj[name]
	if !present {
		return "", !required
	}
	var s string
	if !isString(raw) || json.Unmarshal(raw, &s) != nil || !nameOK(s, false) {
		return "", false
	}
	return s, true
}

// numberField reads an optional number (default 0).
func numberField(obj map[string]json.RawMessage, name string) (float64, bool) {
	raw, present := obj[name]
	if !present {
		return 0, true
	}
	if !isNumber(raw) {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, false
	}
	return v, true
}

// intField reads an integer: a JSON number whose value is whole (17.0 and 1.7e1 are 17) and
// within [lo, hi].
func intField(obj map[string]json.RawMessage, name string, lo, hi uint64, required bool) (uint64, bool, bool) {
	raw, present := obj[name]
	if !present {
		return 0, false, !required
	}
	if !isNumber(raw) {
		return 0, false, false
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || v != math.Trunc(v) || v < float64(lo) || v > float64(hi) {
		return 0, false, false
	}
	return uint64(v), true, true
}

func strategyField(obj map[string]json.RawMessage) (policy.Strategy, bool, bool) {
	raw, present := obj["strategy"]
	if !present {
		return 0, false, true
	}
	var s string
	if !isString(raw) || json.Unmarshal(raw, &s) != nil {
		return 0, false, false
	}
	st, err := policy.ParseStrategy(s)
	if err != nil {
		return 0, false, false
	}
	return st, true, true
}

// sender builds this instance's messages. Encoding is by hand: it runs on every eager write.
type sender struct {
	source, epoch string
}

func unixSeconds() float64 { return float64(time.Now().UnixMicro()) / 1e6 }

func (s *sender) start(buf []byte, act string) []byte {
	buf = append(buf, `{"action":"`...)
	buf = append(buf, act...)
	buf = append(buf, '"')
	return buf
}

func (s *sender) finish(buf []byte) []byte {
	buf = append(buf, `,"timestamp":`...)
	buf = appendMicros(buf, time.Now().UnixMicro())
	buf = append(buf, `,"source":"`...)
	buf = append(buf, s.source...)
	buf = append(buf, `","epoch":"`...)
	buf = append(buf, s.epoch...)
	buf = append(buf, `","v":2}`...)
	return buf
}

// appendMicros writes us microseconds as seconds with 6 decimals: the text
// strconv.AppendFloat(float64(us)/1e6, 'f', 6) gives (the float is within a quarter of a
// microsecond of the value, so it rounds back to the same digits), without float formatting on
// every eager write.
func appendMicros(buf []byte, us int64) []byte {
	if us < 0 {
		return strconv.AppendFloat(buf, float64(us)/1e6, 'f', 6, 64)
	}
	buf = strconv.AppendInt(buf, us/1e6, 10)
	frac := us % 1e6
	buf = append(buf, '.', 0, 0, 0, 0, 0, 0)
	for i := len(buf) - 1; i > len(buf)-7; i-- {
		buf[i] = byte('0' + frac%10)
		frac /= 10
	}
	return buf
}

func appendUint(buf []byte, name string, v uint64) []byte {
	buf = append(buf, ',', '"')
	buf = append(buf, name...)
	buf = append(buf, '"', ':')
	return strconv.AppendUint(buf, v, 10)
}

func (s *sender) invalidate(keys []string, st policy.Strategy, seq uint64) []byte {
	n := 160 + len(s.source) + len(s.epoch) // the members around the keys
	for _, k := range keys {
		n += len(k) + 3
	}
	return s.appendInvalidate(make([]byte, 0, n), keys, st, seq)
}

// appendInvalidate appends the invalidate message to buf (an eager write's on the own
// connection: into a buffer it reuses).
func (s *sender) appendInvalidate(buf []byte, keys []string, st policy.Strategy, seq uint64) []byte {
	buf = s.start(buf, "invalidate")
	buf = append(buf, `,"keys":[`...)
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, k)
	}
	buf = append(buf, `],"strategy":"`...)
	buf = append(buf, st.String()...)
	buf = append(buf, '"')
	buf = appendUint(buf, "seq", seq)
	return s.finish(buf)
}

func (s *sender) flush(seq uint64) []byte {
	return s.finish(appendUint(s.start(nil, "flush"), "seq", seq))
}

func (s *sender) mark(invalSeq uint64) []byte {
	return s.finish(appendUint(s.start(nil, "mark"), "inval_seq", invalSeq))
}

func (s *sender) strategyUpdate(st policy.Strategy, rate float64, invalSeq uint64) []byte {
	buf := s.start(nil, "strategy_update")
	buf = append(buf, `,"strategy":"`...)
	buf = append(buf, st.String()...)
	buf = append(buf, `","write_rate":`...)
	if math.IsNaN(rate) || math.IsInf(rate, 0) || rate < 0 {
		rate = 0
	}
	buf = strconv.AppendFloat(buf, rate, 'f', -1, 64)
	buf = appendUint(buf, "inval_seq", invalSeq)
	return s.finish(buf)
}

func (s *sender) writeReport(count, invalSeq uint64) []byte {
	buf := appendUint(s.start(nil, "write_report"), "count", min(count, maxReportSize))
	buf = appendUint(buf, "inval_seq", invalSeq)
	return s.finish(buf)
}

func (s *sender) heartbeat() []byte { return s.finish(s.start(nil, "heartbeat")) }

const hexDigits = "0123456789abcdef"

// appendJSONString quotes a valid UTF-8 string (keys are checked at the API) as JSON.
func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			buf = append(buf, '\\', c)
		case c < 0x20:
			buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
		default:
			buf = append(buf, c)
		}
	}
	return append(buf, '"')
}
