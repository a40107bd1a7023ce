package acicache

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func loadVectors(t *testing.T, name string, into any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "tests", "vectors", "wire", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
}

// canonical is make.py's canonical form of a decoded message: the fields of its action, in
// JSON terms (absent optionals null; numbers compared as float64).
func canonical(m *message) map[string]any {
	opt := func(has bool, v uint64) any {
		if !has {
			return nil
		}
		return float64(v)
	}
	var epoch any
	if m.epoch != "" {
		epoch = m.epoch
	}
	out := map[string]any{"action": actionStrings[m.action], "source": m.source, "epoch": epoch, "timestamp": m.timestamp}
	switch m.action {
	case actInvalidate:
		keys := make([]any, len(m.keys))
		for i, k := range m.keys {
			keys[i] = k
		}
		out["keys"] = keys
		out["strategy"] = nil
		if m.hasStrategy {
			out["strategy"] = m.strategy.String()
		}
		out["seq"] = opt(m.hasSeq, m.seq)
	case actFlush:
		out["seq"] = opt(m.hasSeq, m.seq)
	case actMark:
		out["inval_seq"] = opt(m.hasInvalSeq, m.invalSeq)
	case actStrategyUpdate:
		out["strategy"] = m.strategy.String()
		out["write_rate"] = m.writeRate
		out["inval_seq"] = opt(m.hasInvalSeq, m.invalSeq)
	case actWriteReport:
		out["count"] = float64(m.count)
		out["inval_seq"] = opt(m.hasInvalSeq, m.invalSeq)
	}
	return out
}

func TestDecodeVectors(t *testing.T) {
	var file struct {
		Cases []struct {
			Name       string         `json:"name"`
			Payload    *string        `json:"payload"`
			PayloadHex *string        `json:"payload_hex"`
			PadTo      int            `json:"pad_to"`
			ExpandKeys int            `json:"expand_keys"`
			Expect     map[string]any `json:"expect"`
		} `json:"cases"`
	}
	loadVectors(t, "decode.json", &file)
	if len(file.Cases) < 50 {
		t.Fatalf("only %d decode cases", len(file.Cases))
	}
	for _, tc := range file.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			var payload []byte
			switch {
			case tc.Payload != nil:
				payload = []byte(*tc.Payload)
			case tc.PayloadHex != nil:
				var err error
				if payload, err = hex.DecodeString(*tc.PayloadHex); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatal("case has no payload")
			}
			if tc.ExpandKeys > 0 {
				keys := strings.TrimSuffix(strings.Repeat(`"k",`, tc.ExpandKeys), ",")
				payload = []byte(strings.Replace(string(payload), `"@KEYS@"`, keys, 1))
			}
			for len(payload) < tc.PadTo {
				payload = append(payload, ' ')
			}
			m, bad := decode(payload)
			if want, ok := tc.Expect["malformed"]; ok {
				if string(bad) != want {
					t.Fatalf("got malformed %q (message %v), want %q", bad, m != nil, want)
				}
				return
			}
			if bad != "" {
				t.Fatalf("refused as %q, want %v", bad, tc.Expect)
			}
			if n, ok := tc.Expect["keys_count"]; ok {
				if actionStrings[m.action] != tc.Expect["action"] || float64(len(m.keys)) != n {
					t.Fatalf("got %s with %d keys, want %v", actionStrings[m.action], len(m.keys), tc.Expect)
				}
				return
			}
			if got := canonical(m); !reflect.DeepEqual(got, tc.Expect) {
				t.Fatalf("decoded\n  %v\nwant\n  %v", got, tc.Expect)
			}
		})
	}
}

// TestEncodeDecodes: everything this host sends decodes as what it meant.
func TestEncodeDecodes(t *testing.T) {
	s := sender{source: "3f2a9c1b0d4e", epoch: "9c1b0d4e3f2a9c1b"}
	for _, tc := range []struct {
		payload []byte
		check   func(m *message) bool
	}{
		{s.invalidate([]string{"a\"b\\c\n\x01", "é漢"}, 1, 7), func(m *message) bool {
			return m.action == actInvalidate && reflect.DeepEqual(m.keys, []string{"a\"b\\c\n\x01", "é漢"}) && m.seq == 7 && m.hasStrategy
		}},
		{s.flush(8), func(m *message) bool { return m.action == actFlush && m.seq == 8 }},
		{s.mark(8), func(m *message) bool { return m.action == actMark && m.invalSeq == 8 }},
		{s.strategyUpdate(2, 12.5, 3), func(m *message) bool {
			return m.action == actStrategyUpdate && m.strategy == 2 && m.writeRate == 12.5 && m.invalSeq == 3
		}},
		{s.writeReport(1<<40, 3), func(m *message) bool { return m.action == actWriteReport && m.count == maxReportSize }},
		{s.heartbeat(), func(m *message) bool { return m.action == actHeartbeat && m.timestamp > 1e9 }},
	} {
		m, bad := decode(tc.payload)
		if bad != "" || m.source != s.source || m.epoch != s.epoch || !tc.check(m) {
			t.Errorf("%s decodes as %+v (%q)", tc.payload, m, bad)
		}
	}
}

func TestLossVectors(t *testing.T) {
	var file struct {
		Cases []struct {
			Name   string `json:"name"`
			Events []struct {
				At     int64   `json:"at"`
				Do     string  `json:"do"`
				Source string  `json:"source"`
				Epoch  *string `json:"epoch"`
				Seq    uint64  `json:"seq"`
				Inval  uint64  `json:"inval_seq"`
				Expect string  `json:"expect"`
			} `json:"events"`
		} `json:"cases"`
	}
	loadVectors(t, "loss.json", &file)
	if len(file.Cases) < 15 {
		t.Fatalf("only %d loss cases", len(file.Cases))
	}
	for _, tc := range file.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			d := newLossDetector()
			for i, ev := range tc.Events {
				epoch := ""
				if ev.Epoch != nil {
					epoch = *ev.Epoch
				}
				var lost bool
				switch ev.Do {
				case "message":
					lost = d.message(ev.Source, epoch, ev.Seq, ev.At)
				case "position":
					lost = d.position(ev.Source, epoch, ev.Inval, ev.At)
				case "tick":
					lost = d.tick(ev.At)
				case "resubscribed":
					d.resubscribed()
				default:
					t.Fatalf("event %d: unknown do %q", i, ev.Do)
				}
				got := map[bool]string{false: "ok", true: "lost"}[lost]
				if got != ev.Expect {
					t.Fatalf("event %d (%s at %d): got %s, want %s", i, ev.Do, ev.At, got, ev.Expect)
				}
			}
		})
	}
}

func TestNamingVectors(t *testing.T) {
	var file struct {
		Cases []struct {
			Name       string            `json:"name"`
			Prefix     string            `json:"channel_prefix"`
			Namespace  *string           `json:"namespace"`
			InstanceID string            `json:"instance_id"`
			Key        string            `json:"key"`
			Expect     map[string]string `json:"expect"`
		} `json:"cases"`
	}
	loadVectors(t, "naming.json", &file)
	for _, tc := range file.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			ns := ""
			if tc.Namespace != nil {
				ns = *tc.Namespace
			}
			n, err := newNames(tc.Prefix, ns, tc.Namespace != nil, tc.InstanceID)
			if err == nil {
				err = n.checkKey(tc.Key)
			}
			if field, ok := tc.Expect["error"]; ok {
				var ce *ConfigError
				if !errors.As(err, &ce) || ce.Field != field || !errors.Is(err, ErrInvalid) {
					t.Fatalf("got %v, want a ConfigError on %s", err, field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{"invalidation": n.invalidation, "strategy": n.strategy, "reports": n.reports,
				"liveness": n.liveness, "lease": n.lease, "redis_key": n.redisKey(tc.Key)}
			if !reflect.DeepEqual(got, tc.Expect) {
				t.Fatalf("got %v, want %v", got, tc.Expect)
			}
			if uk, ok := n.userKey(n.redisKey(tc.Key)); !ok || uk != tc.Key {
				t.Fatalf("userKey(redisKey(%q)) = %q, %v", tc.Key, uk, ok)
			}
		})
	}
}
