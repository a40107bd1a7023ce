package acicache

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/aci-cache/aci-cache/go/policy"
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
			n, err := newNames(tc.Prefix, ns, tc.Namespace != nil, false, tc.InstanceID)
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

// TestPolicyVectors replays tests/vectors/wire/policy.json (docs/WIRE.md 9): announcements,
// signatures (made here with crypto/ed25519 from the seed, deterministic as RFC 8032 is, and
// verified by the host's trust check) and rollout records.
func TestPolicyVectors(t *testing.T) {
	var file struct {
		Cases []struct {
			Kind      string             `json:"kind"`
			Name      string             `json:"name"`
			Payload   string             `json:"payload"`
			PadTo     int                `json:"pad_to"`
			Expect    map[string]any     `json:"expect"`
			Seed      string             `json:"seed"`
			PublicKey string             `json:"public_key"`
			Prefix    string             `json:"prefix"`
			Namespace *string            `json:"namespace"`
			SHA256    string             `json:"sha256"`
			Config    string             `json:"config"`
			Message   string             `json:"message"`
			Sig       string             `json:"sig"`
			Fields    map[string]*string `json:"fields"`
			Instance  string             `json:"instance"`
			Verifies  []struct {
				Prefix    string  `json:"prefix"`
				Namespace *string `json:"namespace"`
				SHA256    string  `json:"sha256"`
				Config    string  `json:"config"`
				Verifies  bool    `json:"verifies"`
			} `json:"verifies"`
		} `json:"cases"`
	}
	loadVectors(t, "policy.json", &file)
	kinds := map[string]int{}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	for _, tc := range file.Cases {
		kinds[tc.Kind]++
		t.Run(tc.Kind+"/"+tc.Name, func(t *testing.T) {
			switch tc.Kind {
			case "announcement":
				payload := []byte(tc.Payload)
				for len(payload) < tc.PadTo {
					payload = append(payload, ' ')
				}
				var got map[string]any
				if n, source, bad := decodePolicy(payload); bad != "" {
					got = map[string]any{"malformed": string(bad)}
				} else {
					got = map[string]any{"rollout": float64(n), "source": source}
				}
				if !reflect.DeepEqual(got, tc.Expect) {
					t.Fatalf("got %v, want %v", got, tc.Expect)
				}
			case "signature":
				seed, err := hex.DecodeString(tc.Seed)
				if err != nil {
					t.Fatal(err)
				}
				key := ed25519.NewKeyFromSeed(seed)
				if pub := hex.EncodeToString(key.Public().(ed25519.PublicKey)); pub != tc.PublicKey {
					t.Fatalf("public key %s, want %s", pub, tc.PublicKey)
				}
				msg := signedMessage(tc.Prefix, str(tc.Namespace), tc.SHA256, tc.Config)
				if string(msg) != tc.Message {
					t.Fatalf("signed message %q, want %q", msg, tc.Message)
				}
				if sig := hex.EncodeToString(ed25519.Sign(key, msg)); sig != tc.Sig {
					t.Fatalf("signature %s, want %s", sig, tc.Sig)
				}
				tr, err := newTrust(tc.PublicKey, true, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range tc.Verifies {
					reason := tr.check(v.Prefix, str(v.Namespace), target{SHA256: v.SHA256, Config: v.Config, Sig: tc.Sig})
					if (reason == "") != v.Verifies {
						t.Errorf("variant %+v: reason %q", v, reason)
					}
				}
			case "record":
				fields := map[string]string{}
				for k, v := range tc.Fields {
					if v != nil {
						fields[k] = *v
					}
				}
				var got map[string]any
				rec, err := parseRecord(fields)
				var re *recordError
				switch {
				case errors.As(err, &re):
					got = map[string]any{"malformed": re.field}
				case err != nil || rec == nil:
					t.Fatalf("parseRecord: %v, %v", rec, err)
				default:
					tg := rec.targetFor(tc.Instance)
					got = map[string]any{"sha256": tg.SHA256, "config": tg.Config, "sig": tg.Sig}
				}
				if !reflect.DeepEqual(got, tc.Expect) {
					t.Fatalf("got %v, want %v", got, tc.Expect)
				}
			default:
				t.Fatalf("unknown kind %q", tc.Kind)
			}
		})
	}
	if len(kinds) != 3 || len(file.Cases) < 30 {
		t.Fatalf("cases by kind: %v", kinds)
	}
}

// TestTrustAndOverrides: the rules of docs/WIRE.md 9.4 and 9.5 beyond the vectors.
func TestTrustAndOverrides(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	pubHex := hex.EncodeToString(pub)
	h := strings.Repeat("ab", 32)
	sign := func(ns, sha, cfg string) string {
		return hex.EncodeToString(ed25519.Sign(priv, signedMessage("aci", ns, sha, cfg)))
	}
	signed := target{SHA256: h, Sig: sign("ns", h, "")}
	none, _ := newTrust("", false, nil)
	if r := none.check("aci", "ns", signed); !strings.HasPrefix(r, "no policy trust configured") {
		t.Errorf("no trust: %q", r)
	}
	if r := none.check("aci", "ns", target{}); r != "" {
		t.Errorf("returning to the local policy needs no trust: %q", r)
	}
	key, _ := newTrust(pubHex, true, nil)
	if r := key.check("aci", "ns", signed); r != "" {
		t.Errorf("signed: %q", r)
	}
	if r := key.check("aci", "other", signed); !strings.HasPrefix(r, "bad signature") {
		t.Errorf("other namespace: %q", r)
	}
	if r := key.check("aci", "ns", target{SHA256: h}); !strings.HasPrefix(r, "unsigned") {
		t.Errorf("unsigned: %q", r)
	}
	allow, _ := newTrust("", false, []string{h})
	if r := allow.check("aci", "ns", target{SHA256: h}); r != "" {
		t.Errorf("allow-listed: %q", r)
	}
	if r := allow.check("aci", "ns", target{SHA256: strings.Repeat("cd", 32)}); r != "not in the allow-list" {
		t.Errorf("not listed: %q", r)
	}
	if r := allow.check("aci", "ns", target{SHA256: h, Config: "{}"}); r == "" {
		t.Error("an allow-listed hash with a config override ran unsigned")
	}
	both, _ := newTrust(pubHex, true, []string{h})
	if both.kind() != "key+allow-list" || key.kind() != "key" || allow.kind() != "allow-list" || none.kind() != "none" {
		t.Error("trust kinds")
	}
	cfgSigned := target{SHA256: h, Config: `{"hold-ms":5}`, Sig: sign("ns", h, `{"hold-ms":5}`)}
	if r := both.check("aci", "ns", cfgSigned); r != "" {
		t.Errorf("a signed override of an allow-listed hash: %q", r)
	}
	// A small-order public key (the identity) verifies forged signatures under plain
	// verification; strict verification refuses it at configuration.
	ident := "01" + strings.Repeat("00", 31)
	if _, err := newTrust(ident, true, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("small-order key accepted: %v", err)
	}
	for _, bad := range []string{strings.ToUpper(pubHex), pubHex[:62], "xyz"} {
		var ce *ConfigError
		if _, err := newTrust(bad, true, nil); !errors.As(err, &ce) || ce.Field != "policy_public_key" {
			t.Errorf("key %q: %v", bad, err)
		}
	}
	var ce *ConfigError
	if _, err := newTrust("", false, []string{"AB"}); !errors.As(err, &ce) || ce.Field != "policy_allow_hashes" {
		t.Errorf("bad hash: %v", err)
	}

	base := policy.Config{LowThreshold: 10, HighThreshold: 50, WindowMs: 5000, HoldMs: 3000, BatchIntervalMs: 2500,
		BatchMaxKeys: 1000, BatchMaxBytes: 1 << 20}
	c, err := applyOverrides(base, `{"initial-strategy":"eager","window-ms":1e3,"low-threshold":1}`)
	if err != nil || c.InitialStrategy != policy.StrategyEager || c.WindowMs != 1000 || c.LowThreshold != 1 || c.HoldMs != 3000 {
		t.Errorf("overrides: %+v, %v", c, err)
	}
	for cfg, field := range map[string]string{
		`{"window-ms":1.5}`: "window-ms", `{"bogus":1}`: "bogus", `{"initial-strategy":"lazy"}`: "initial-strategy",
		`{"hold-ms":"5"}`: "hold-ms", `{"batch-max-keys":3e10}`: "batch-max-keys", `{"high-threshold":null}`: "high-threshold",
	} {
		if _, err := applyOverrides(base, cfg); err == nil || !strings.HasPrefix(err.Error(), "config: "+field+":") {
			t.Errorf("%s: %v", cfg, err)
		}
	}
}

// FuzzPolicyInputs: nothing read from P:policy or K policy:current makes the host panic (the
// seeds run with go test; go test -fuzz FuzzPolicyInputs explores).
func FuzzPolicyInputs(f *testing.F) {
	for _, s := range []string{`{"action":"policy","rollout":7,"source":"a"}`, `{"initial-strategy":"eager","window-ms":1e3}`,
		"3", "", "[1]", `{"window-ms":1e400}`, strings.Repeat("[", 70), "\xff"} {
		f.Add(s, s)
	}
	pub, priv, _ := ed25519.GenerateKey(nil)
	tr, _ := newTrust(hex.EncodeToString(pub), true, []string{strings.Repeat("ab", 32)})
	f.Fuzz(func(t *testing.T, a, b string) {
		_, _, _ = decodePolicy([]byte(a))
		rec, err := parseRecord(map[string]string{"rollout": a, "sha256": strings.Repeat("ab", 32), "config": b, "canary": a, "name": b})
		if err == nil && rec != nil {
			rec.targetFor(b)
		}
		_, _ = applyOverrides(policy.Config{}, b)
		sig := hex.EncodeToString(ed25519.Sign(priv, signedMessage("aci", a, strings.Repeat("ab", 32), b)))
		if tr.check("aci", a, target{SHA256: strings.Repeat("ab", 32), Config: b, Sig: sig}) != "" {
			t.Fatal("a valid signature refused")
		}
		_ = tr.check("aci", a, target{SHA256: strings.Repeat("cd", 32), Config: b, Sig: hex.EncodeToString([]byte(a + b))})
		_ = clip(a, 3)
	})
}
