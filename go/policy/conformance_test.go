package policy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/aci-cache/aci-cache/go/policy"
)

// repoRoot walks up from the package directory to the repository root, which holds the WIT
// contract, so that the tests find the built policies and the vectors wherever they run from.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "wit", "policy.wit")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (with wit/policy.wit) not found above the working directory")
		}
		dir = parent
	}
}

// policyDir is where adaptive.wasm and fixed.wasm are: $ACI_POLICY_DIR, else
// target/policies in the repository.
func policyDir(t testing.TB) string {
	if dir := os.Getenv("ACI_POLICY_DIR"); dir != "" {
		return dir
	}
	return filepath.Join(repoRoot(t), "target", "policies")
}

// modules compiles each policy once per test binary; every vector then instantiates a fresh
// engine from it, which is what "a fresh instance" means and costs far less than a compile.
var modules struct {
	sync.Mutex
	byName map[string]*policy.Module
}

func policyModule(t testing.TB, name string) *policy.Module {
	t.Helper()
	modules.Lock()
	defer modules.Unlock()
	if m := modules.byName[name]; m != nil {
		return m
	}
	path := filepath.Join(policyDir(t), name+".wasm")
	wasm, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (build the policies with `cargo xtask policies` at the repository root, or set ACI_POLICY_DIR)", err)
	}
	m, err := policy.Compile(wasm)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if modules.byName == nil {
		modules.byName = map[string]*policy.Module{}
	}
	modules.byName[name] = m
	return m
}

func newEngine(t testing.TB, name string) *policy.Engine {
	t.Helper()
	e, err := policyModule(t, name).Instantiate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// The vector format (tests/vectors/*.json); field names are the WIT's kebab-case ones.
type vector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Policy      string `json:"policy"`
	Steps       []step `json:"steps"`
}

type step struct {
	Op       string          `json:"op"`
	Now      *uint64         `json:"now"`
	Key      *string         `json:"key"`
	Keys     []string        `json:"keys"`
	Count    *uint32         `json:"count"`
	Strategy *string         `json:"strategy"`
	Config   *jsonConfig     `json:"config"`
	Expect   json.RawMessage `json:"expect"`
}

// jsonFloat is a float64 that also reads the strings "NaN", "Infinity" and "-Infinity", which
// the vectors use where JSON has no number.
type jsonFloat float64

func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		switch s {
		case "NaN":
			*f = jsonFloat(math.NaN())
		case "Infinity":
			*f = jsonFloat(math.Inf(1))
		case "-Infinity":
			*f = jsonFloat(math.Inf(-1))
		default:
			return fmt.Errorf("float: unexpected string %q", s)
		}
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*f = jsonFloat(v)
	return nil
}

// sameFloat is exact equality, bit for bit, except that any NaN matches any NaN: every host
// runs the same wasm, so a result that differs in the last bit is a host bug.
func sameFloat(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Float64bits(a) == math.Float64bits(b)
}

type jsonConfig struct {
	LowThreshold    jsonFloat       `json:"low-threshold"`
	HighThreshold   jsonFloat       `json:"high-threshold"`
	WindowMs        int32           `json:"window-ms"`
	HoldMs          int32           `json:"hold-ms"`
	BatchIntervalMs int32           `json:"batch-interval-ms"`
	BatchMaxKeys    int32           `json:"batch-max-keys"`
	BatchMaxBytes   int32           `json:"batch-max-bytes"`
	InitialStrategy policy.Strategy `json:"initial-strategy"`
}

func (c jsonConfig) config() policy.Config {
	return policy.Config{
		LowThreshold:    float64(c.LowThreshold),
		HighThreshold:   float64(c.HighThreshold),
		WindowMs:        c.WindowMs,
		HoldMs:          c.HoldMs,
		BatchIntervalMs: c.BatchIntervalMs,
		BatchMaxKeys:    c.BatchMaxKeys,
		BatchMaxBytes:   c.BatchMaxBytes,
		InitialStrategy: c.InitialStrategy,
	}
}

func sameConfig(a, b policy.Config) bool {
	fa, fb := a, b
	fa.LowThreshold, fa.HighThreshold, fb.LowThreshold, fb.HighThreshold = 0, 0, 0, 0
	return fa == fb && sameFloat(a.LowThreshold, b.LowThreshold) && sameFloat(a.HighThreshold, b.HighThreshold)
}

type jsonConfigError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

type jsonBatch struct {
	Keys     []string `json:"keys"`
	FlushAll bool     `json:"flush-all"`
}

type jsonSnapshot struct {
	Strategy     policy.Strategy `json:"strategy"`
	WriteRate    jsonFloat       `json:"write-rate"`
	BufferedKeys uint32          `json:"buffered-keys"`
	BatchDue     bool            `json:"batch-due"`
	Switches     uint64          `json:"switches"`
	Following    bool            `json:"following"`
}

type jsonPolicyInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// decodeStrict decodes JSON refusing unknown fields, so a vector that drifts from the format
// fails loudly instead of being half checked.
func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

func TestVectors(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "tests", "vectors")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no vectors in %s", dir)
	}
	sort.Strings(files)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var v vector
		if err := decodeStrict(data, &v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		t.Run(v.Name, func(t *testing.T) { replay(t, v) })
	}
}

// replay runs a vector's steps on a fresh engine and stops at the first mismatch: later steps
// start from a state that already differs, so their failures would only be noise.
func replay(t *testing.T, v vector) {
	if v.Policy != "adaptive" && v.Policy != "fixed" && v.Policy != "budget" {
		t.Fatalf("vector %s: unknown policy %q", v.Name, v.Policy)
	}
	if len(v.Steps) == 0 {
		t.Fatalf("vector %s has no steps", v.Name)
	}
	e := newEngine(t, v.Policy)
	for i, s := range v.Steps {
		r, err := runStep(e, s)
		if err != nil {
			t.Fatalf("vector %s step %d (%s): %v", v.Name, i, s.Op, err)
		}
		if !r.equal {
			t.Fatalf("vector %s step %d (%s): mismatch\nwant: %s\n got: %s", v.Name, i, s.Op, r.want, r.got)
		}
		if err := e.Err(); err != nil {
			t.Fatalf("vector %s step %d (%s): engine failed: %v", v.Name, i, s.Op, err)
		}
	}
}

// outcome is one step's comparison: equal is decided on the values themselves (floats bit for
// bit), want and got are only their renderings for a failure message.
type outcome struct {
	want, got string
	equal     bool
}

func compared(want, got any, equal bool) outcome {
	return outcome{fmt.Sprintf("%v", want), fmt.Sprintf("%v", got), equal}
}

// runStep performs one step; an error means the step itself is malformed.
func runStep(e *policy.Engine, s step) (outcome, error) {
	timeless := s.Op == "describe" || s.Op == "default-config"
	returnsNothing := s.Op == "follow" || s.Op == "lead"
	var now uint64
	switch {
	case timeless && s.Now != nil:
		return outcome{}, fmt.Errorf("%s takes no \"now\"", s.Op)
	case !timeless && s.Now == nil:
		return outcome{}, fmt.Errorf("step has no \"now\"")
	case !timeless:
		now = *s.Now
	}
	hasExpect := len(s.Expect) > 0 && string(s.Expect) != "null"
	if returnsNothing && hasExpect {
		return outcome{}, fmt.Errorf("%s returns nothing, but the step expects %s", s.Op, s.Expect)
	}
	if !returnsNothing && !hasExpect && s.Op != "configure" {
		return outcome{}, fmt.Errorf("step has no \"expect\"")
	}
	expect := func(v any) error {
		if err := decodeStrict(s.Expect, v); err != nil {
			return fmt.Errorf("expect: %v", err)
		}
		return nil
	}
	strategyStep := func(call func() policy.Strategy) (outcome, error) {
		var w policy.Strategy
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		g := call()
		return compared(w, g, w == g), nil
	}

	switch s.Op {
	case "describe":
		var w jsonPolicyInfo
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		info := e.Describe()
		g := jsonPolicyInfo{info.Name, info.Version}
		return compared(fmt.Sprintf("%+v", w), fmt.Sprintf("%+v", g), w == g), nil
	case "default-config":
		var w jsonConfig
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		g := e.DefaultConfig()
		return compared(fmt.Sprintf("%+v", w.config()), fmt.Sprintf("%+v", g), sameConfig(w.config(), g)), nil
	case "configure":
		if s.Config == nil {
			return outcome{}, fmt.Errorf("step has no \"config\"")
		}
		var w map[string]*jsonConfigError
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		var want string
		if ok, isOk := w["ok"]; isOk && ok == nil && len(w) == 1 {
			want = "ok"
		} else if cerr := w["err"]; cerr != nil && len(w) == 1 {
			want = fmt.Sprintf("err %+v", *cerr)
		} else {
			return outcome{}, fmt.Errorf("expect is neither {\"ok\": null} nor {\"err\": {...}}: %s", s.Expect)
		}
		var got string
		switch err := e.Configure(s.Config.config(), now).(type) {
		case nil:
			got = "ok"
		case *policy.ConfigError:
			got = fmt.Sprintf("err %+v", jsonConfigError{err.Field, err.Message})
		default:
			got = "failure: " + err.Error()
		}
		return compared(want, got, want == got), nil
	case "record-write":
		if s.Key == nil {
			return outcome{}, fmt.Errorf("step has no \"key\"")
		}
		return strategyStep(func() policy.Strategy { return e.RecordWrite(*s.Key, now) })
	case "record-writes":
		if s.Keys == nil {
			return outcome{}, fmt.Errorf("step has no \"keys\"")
		}
		return strategyStep(func() policy.Strategy { return e.RecordWrites(s.Keys, now) })
	case "record-remote-writes":
		if s.Count == nil {
			return outcome{}, fmt.Errorf("step has no \"count\"")
		}
		return strategyStep(func() policy.Strategy { return e.RecordRemoteWrites(*s.Count, now) })
	case "current-strategy":
		return strategyStep(func() policy.Strategy { return e.CurrentStrategy(now) })
	case "write-rate":
		var w jsonFloat
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		g := e.WriteRate(now)
		return compared(floatString(float64(w)), floatString(g), sameFloat(float64(w), g)), nil
	case "pending-batch":
		var w jsonBatch
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		g := e.PendingBatch(now)
		equal := slices.Equal(w.Keys, g.Keys) && w.FlushAll == g.FlushAll
		return compared(batchString(w.Keys, w.FlushAll), batchString(g.Keys, g.FlushAll), equal), nil
	case "status":
		var w jsonSnapshot
		if err := expect(&w); err != nil {
			return outcome{}, err
		}
		want := policy.Snapshot{Strategy: w.Strategy, WriteRate: float64(w.WriteRate),
			BufferedKeys: w.BufferedKeys, BatchDue: w.BatchDue, Switches: w.Switches, Following: w.Following}
		g := e.Status(now)
		wantRest, gotRest := want, g
		wantRest.WriteRate, gotRest.WriteRate = 0, 0
		equal := wantRest == gotRest && sameFloat(want.WriteRate, g.WriteRate)
		return compared(snapshotString(want), snapshotString(g), equal), nil
	case "follow":
		if s.Strategy == nil {
			return outcome{}, fmt.Errorf("step has no \"strategy\"")
		}
		st, err := policy.ParseStrategy(*s.Strategy)
		if err != nil {
			return outcome{}, err
		}
		e.Follow(st, now)
		return outcome{equal: true}, nil
	case "lead":
		e.Lead(now)
		return outcome{equal: true}, nil
	}
	return outcome{}, fmt.Errorf("unknown op %q", s.Op)
}

// floatString renders a float as the shortest decimal that reads back as the same bits, with
// the bits themselves, so that a failure shows even a last-bit difference.
func floatString(f float64) string {
	return fmt.Sprintf("%v (%#016x)", f, math.Float64bits(f))
}

// batchString renders a batch for a failure message, shortening long keys (one vector has a
// 10 KB key) to their start and length.
func batchString(keys []string, flushAll bool) string {
	quoted := make([]string, len(keys))
	for i, k := range keys {
		if len(k) > 64 {
			quoted[i] = fmt.Sprintf("%q...(%d bytes)", k[:64], len(k))
		} else {
			quoted[i] = fmt.Sprintf("%q", k)
		}
	}
	return fmt.Sprintf("keys=[%s] flush-all=%v", strings.Join(quoted, " "), flushAll)
}

func snapshotString(s policy.Snapshot) string {
	return fmt.Sprintf("strategy=%v write-rate=%s buffered-keys=%d batch-due=%v switches=%d following=%v",
		s.Strategy, floatString(s.WriteRate), s.BufferedKeys, s.BatchDue, s.Switches, s.Following)
}
