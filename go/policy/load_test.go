package policy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aci-cache/aci-cache/go/policy"
)

func le32(vs ...uint32) []byte {
	var out []byte
	for _, v := range vs {
		out = binary.LittleEndian.AppendUint32(out, v)
	}
	return out
}

// TestLoadRejects writes files that are not policies and checks that Load refuses each with an
// error that says why (and that errors.Is can classify), never with a panic.
func TestLoadRejects(t *testing.T) {
	realPolicy, err := os.ReadFile(filepath.Join(policyDir(t), "adaptive.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	allTrapping := policyShape(nil)
	withImport := policyShape(nil)
	withImport.imports = []wasmImport{{module: "wasi:cli/environment@0.2.0", name: "get-environment", params: []byte{tI32}}}
	// Every export present, but configure takes its config as a pointer, as it would if the
	// record had grown past 16 flat values.
	wrongSigs := policyShape(nil)
	for _, ex := range wrongSigs.exports {
		if ex.name == "aci:cache/policy@0.1.0#configure" {
			wrongSigs.funcs[ex.idx] = wasmFunc{params: []byte{tI32, tI64}, results: []byte{tI32}, body: []byte{opUnreachable}}
		}
	}

	tests := []struct {
		name    string
		file    []byte
		wantErr error
		wantMsg string
	}{
		{"text file", []byte("#!/bin/sh\necho not wasm\n"), policy.ErrNotWasm, "not a WebAssembly binary"},
		{"empty file", nil, policy.ErrNotWasm, "not a WebAssembly binary"},
		{"empty core module", coreModule{}.bytes(), policy.ErrNotComponent, "core module"},
		{"policy-shaped core module", allTrapping.bytes(), policy.ErrNotComponent, "core module"},
		{"unknown layer", []byte("\x00asm\x0d\x00\x02\x00"), policy.ErrNotComponent, "unknown layer 2"},
		{"component without core module", component(), policy.ErrNotPolicy, "embeds no core module"},
		{"component of another interface", component(coreModule{memory: true,
			funcs:   []wasmFunc{{results: []byte{tI32}, body: i32Const(0)}},
			exports: []wasmExport{{name: "memory", kind: 2}, {name: "wasi:cli/run@0.2.0#run", idx: 0}}}.bytes()),
			policy.ErrNotPolicy, `no "aci:cache/policy@0.1.0#describe" export`},
		{"component with wrong signatures", component(wrongSigs.bytes()), policy.ErrNotPolicy,
			`"aci:cache/policy@0.1.0#configure" has core signature (i32, i64) -> (i32), want (f64, f64, i32, i32, i32, i32, i32, i32, i64) -> (i32)`},
		{"component whose module imports", component(withImport.bytes()), policy.ErrNotPolicy,
			"imports function wasi:cli/environment@0.2.0.get-environment"},
		{"component with a broken core module", component([]byte("\x00asm\x01\x00\x00\x00\x01\xff")), policy.ErrNotPolicy,
			"does not compile"},
		{"truncated component", realPolicy[:len(realPolicy)/2], policy.ErrMalformed, "claims"},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".wasm")
			if err := os.WriteFile(path, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			e, err := policy.Load(path)
			if err == nil {
				_ = e.Close()
				t.Fatalf("case %d: Load(%s) succeeded", i, path)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %q is not %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file and say %q", err, tc.wantMsg)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := policy.Load(filepath.Join(dir, "nope.wasm"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("got %v, want a not-exist error", err)
		}
	})
}

// TestTrapMakesEngineUnusable runs a policy whose every function traps: each method must
// return its documented safe value, Err must say what failed, and nothing may panic.
func TestTrapMakesEngineUnusable(t *testing.T) {
	e, err := policy.LoadBytes(component(policyShape(nil).bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Err(); err != nil {
		t.Fatalf("fresh engine has Err %v", err)
	}
	if s := e.RecordWrite("user:1", 0); s != policy.StrategyEager {
		t.Errorf("RecordWrite on a trapping engine = %v, want eager", s)
	}
	var callErr *policy.CallError
	if err := e.Err(); !errors.As(err, &callErr) || callErr.Func != "record-write" {
		t.Fatalf("Err() = %v, want a *CallError for record-write", err)
	}
	if st := e.Status(1); st != (policy.Snapshot{Strategy: policy.StrategyEager, BatchDue: true}) {
		t.Errorf("Status before the flush = %+v", st)
	}
	if b := e.PendingBatch(1); !b.FlushAll || len(b.Keys) != 0 {
		t.Errorf("first PendingBatch after a failure = %+v, want FlushAll", b)
	}
	if b := e.PendingBatch(2); b.FlushAll || len(b.Keys) != 0 {
		t.Errorf("second PendingBatch after a failure = %+v, want nothing", b)
	}
	if st := e.Status(2); st != (policy.Snapshot{Strategy: policy.StrategyEager}) {
		t.Errorf("Status after the flush = %+v", st)
	}
	if err := e.Configure(policy.Config{}, 3); !errors.As(err, &callErr) {
		t.Errorf("Configure on a failed engine = %v, want its *CallError", err)
	}
	e.Follow(policy.StrategyTTL, 3)
	e.Lead(3)
	if s := e.CurrentStrategy(3); s != policy.StrategyEager {
		t.Errorf("CurrentStrategy = %v", s)
	}
	if r := e.WriteRate(3); r != 0 {
		t.Errorf("WriteRate = %v", r)
	}
	if e.Describe() != (policy.PolicyInfo{}) || e.DefaultConfig() != (policy.Config{}) {
		t.Error("Describe or DefaultConfig returned data from a failed engine")
	}
	if err := e.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestBadResultsAreErrors runs a policy that returns results breaking the canonical ABI; each
// must make the engine fail with a message saying what was wrong.
func TestBadResultsAreErrors(t *testing.T) {
	const iface = "aci:cache/policy@0.1.0#"
	shape := policyShape(map[string][]byte{
		"cabi_realloc":                         i32Const(1024),
		iface + "describe":                     i32Const(16),         // strings of invalid UTF-8
		iface + "default-config":               i32Const(4),          // misaligned for a record of align 8
		iface + "configure":                    i32Const(48),         // result discriminant 2
		iface + "record-write":                 i32Const(7),          // strategy 7
		iface + "current-strategy":             i32Const(1),          // fine: batched
		iface + "pending-batch":                i32Const(32),         // a list far outside memory
		iface + "status":                       i32Const(0x7ffffff8), // return area outside memory
		iface + "write-rate":                   append([]byte{opF64Const}, le64(0x7ff8_dead_beef_0001)...),
		"cabi_post_" + iface + "pending-batch": nil,
	})
	shape.data = []wasmData{
		{16, le32(64, 2, 64, 2)},
		{32, le32(0xffff_fff0, 3, 0)},
		{48, []byte{2}},
		{64, []byte{0xff, 0xfe}},
	}
	m, err := policy.Compile(component(shape.bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	tests := []struct {
		name    string
		call    func(e *policy.Engine)
		wantMsg string
	}{
		{"describe", func(e *policy.Engine) { e.Describe() }, "not valid UTF-8"},
		{"default-config", func(e *policy.Engine) { e.DefaultConfig() }, "not 8-byte aligned"},
		{"configure", func(e *policy.Engine) { _ = e.Configure(policy.Config{}, 0) }, "discriminant 2 out of range"},
		{"record-write", func(e *policy.Engine) { e.RecordWrite("k", 0) }, "strategy discriminant 7 out of range"},
		{"pending-batch", func(e *policy.Engine) { e.PendingBatch(0) }, "outside linear memory"},
		{"status", func(e *policy.Engine) { e.Status(0) }, "outside linear memory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := m.Instantiate()
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			tc.call(e)
			var callErr *policy.CallError
			if err := e.Err(); !errors.As(err, &callErr) || callErr.Func != tc.name || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Err() = %v, want a *CallError for %s saying %q", err, tc.name, tc.wantMsg)
			}
		})
	}

	t.Run("healthy calls", func(t *testing.T) {
		e, err := m.Instantiate()
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		if s := e.CurrentStrategy(0); s != policy.StrategyBatched {
			t.Errorf("CurrentStrategy = %v, want batched", s)
		}
		if r := e.WriteRate(0); !math.IsNaN(r) {
			t.Errorf("WriteRate = %v, want NaN", r)
		}
		if err := e.Err(); err != nil {
			t.Errorf("Err() = %v", err)
		}
	})
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func TestConfigureRefusesUnknownStrategy(t *testing.T) {
	e := newEngine(t, "adaptive")
	cfg := e.DefaultConfig()
	cfg.InitialStrategy = 9
	var cerr *policy.ConfigError
	if err := e.Configure(cfg, 0); !errors.As(err, &cerr) || cerr.Field != "initial-strategy" {
		t.Fatalf("Configure = %v, want a ConfigError on initial-strategy", err)
	}
	if err := e.Err(); err != nil {
		t.Fatalf("a refused config broke the engine: %v", err)
	}
}

func TestNonUTF8KeyIsReplaced(t *testing.T) {
	e := newEngine(t, "fixed")
	cfg := e.DefaultConfig()
	cfg.InitialStrategy = policy.StrategyBatched
	if err := e.Configure(cfg, 0); err != nil {
		t.Fatal(err)
	}
	e.RecordWrite("a\xffb", 0)
	e.RecordWrites([]string{"\xc3", "ok"}, 0)
	b := e.PendingBatch(uint64(cfg.BatchIntervalMs))
	want := []string{"a\uFFFDb", "\uFFFD", "ok"}
	if strings.Join(b.Keys, "|") != strings.Join(want, "|") {
		t.Errorf("keys = %q, want %q", b.Keys, want)
	}
}

// TestInstancesAreIndependent checks that engines from one Module share code, not state.
func TestInstancesAreIndependent(t *testing.T) {
	a, b := newEngine(t, "adaptive"), newEngine(t, "adaptive")
	a.RecordRemoteWrites(1000, 0)
	if ra, rb := a.WriteRate(0), b.WriteRate(0); ra == 0 || rb != 0 {
		t.Errorf("write rates %v and %v, want only the first non-zero", ra, rb)
	}
}

// TestConcurrentCalls checks that the engine serialises calls from many goroutines: every
// write is counted once.
func TestConcurrentCalls(t *testing.T) {
	e := newEngine(t, "adaptive")
	const workers, writes = 4, 500
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < writes; i++ {
				e.RecordWrite("user:1", 0)
				e.Status(0)
			}
		}()
	}
	wg.Wait()
	// Default window: 5000 ms, so the rate is writes / 5 s.
	if got, want := e.WriteRate(0), float64(workers*writes)/5; got != want {
		t.Errorf("write rate %v, want %v", got, want)
	}
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestStrategyText(t *testing.T) {
	for _, s := range []policy.Strategy{policy.StrategyTTL, policy.StrategyBatched, policy.StrategyEager} {
		text, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back policy.Strategy
		if err := back.UnmarshalText(text); err != nil || back != s || string(text) != s.String() {
			t.Errorf("%v: text %q reads back as %v (%v)", s, text, back, err)
		}
	}
	if _, err := policy.ParseStrategy("fast"); err == nil {
		t.Error(`ParseStrategy("fast") succeeded`)
	}
	if _, err := policy.Strategy(3).MarshalText(); err == nil {
		t.Error("Strategy(3).MarshalText succeeded")
	}
}

func TestFollowPanicsOnUnknownStrategy(t *testing.T) {
	e := newEngine(t, "adaptive")
	defer func() {
		if recover() == nil {
			t.Error("Follow(Strategy(5)) did not panic")
		}
	}()
	e.Follow(5, 0)
}

// testPolicy loads one of the project's test-only policies (built by `cargo xtask policies`
// alongside the real ones), skipping when the policy directory has none.
func testPolicy(t *testing.T, name string) string {
	path := filepath.Join(policyDir(t), name+".wasm")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not built: %v", name, err)
	}
	return path
}

// TestHostilePolicy runs the project's hostile policy, which misbehaves on trigger keys, and
// checks that each fault ends in the documented fallback, not a panic or a runaway process.
func TestHostilePolicy(t *testing.T) {
	path := testPolicy(t, "hostile")
	load := func(t *testing.T, opts ...policy.Option) *policy.Engine {
		e, err := policy.Load(path, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Close() })
		return e
	}

	t.Run("endless loop", func(t *testing.T) {
		m, err := policy.CompileFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		instantiate := func() *policy.Engine {
			e, err := m.Instantiate()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.Close() })
			return e
		}
		victim, bystander := instantiate(), instantiate()
		bystander.RecordRemoteWrites(10, 0)
		goroutines := runtime.NumGoroutine()

		start := time.Now()
		s := victim.RecordWrite("hostile:loop", 1)
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("RecordWrite of the looping key returned after %v; the deadline is %v", elapsed, policy.DefaultCallTimeout)
		} else {
			t.Logf("the looping call returned after %v", elapsed)
		}
		if s != policy.StrategyEager {
			t.Errorf("strategy after a timeout = %v, want eager", s)
		}
		err = victim.Err()
		var callErr *policy.CallError
		var timeout *policy.TimeoutError
		if !errors.As(err, &callErr) || callErr.Func != "record-write" || !errors.As(err, &timeout) ||
			timeout.Limit != policy.DefaultCallTimeout || !errors.Is(err, context.DeadlineExceeded) ||
			!strings.Contains(err.Error(), "deadline") {
			t.Fatalf("Err() = %v, want a *CallError for record-write wrapping a *TimeoutError at the default deadline", err)
		}
		if b := victim.PendingBatch(2); !b.FlushAll || len(b.Keys) != 0 {
			t.Errorf("first PendingBatch after a timeout = %+v, want FlushAll", b)
		}
		if s := victim.RecordWrite("user:1", 3); s != policy.StrategyEager {
			t.Errorf("RecordWrite after a timeout = %v, want eager", s)
		}
		if err := victim.Close(); err != nil {
			t.Errorf("Close after a timeout: %v", err)
		}

		// Closing the victim's instance left the compiled code, and the other engines, alone.
		for _, e := range []*policy.Engine{bystander, instantiate()} {
			cfg := e.DefaultConfig()
			cfg.InitialStrategy = policy.StrategyBatched
			if err := e.Configure(cfg, 4); err != nil {
				t.Fatal(err)
			}
			if s := e.RecordWrite("user:1", 4); s != policy.StrategyBatched {
				t.Errorf("RecordWrite on another engine = %v, want batched", s)
			}
			if b := e.PendingBatch(4 + uint64(cfg.BatchIntervalMs)); len(b.Keys) != 1 || b.Keys[0] != "user:1" || b.FlushAll {
				t.Errorf("PendingBatch on another engine = %+v, want [user:1]", b)
			}
			if err := e.Err(); err != nil {
				t.Errorf("another engine failed: %v", err)
			}
		}

		// wazero watches each call's context from a goroutine of its own; none may outlive
		// its call, stopped or not.
		for i := range 3 {
			e := instantiate()
			e.RecordWrite("hostile:loop", uint64(i))
			if e.Err() == nil {
				t.Fatal("the looping call did not fail")
			}
		}
		waitGoroutines(t, goroutines)
	})

	t.Run("shorter deadline", func(t *testing.T) {
		e := load(t, policy.WithCallTimeout(5*time.Millisecond))
		e.RecordWrites([]string{"user:1", "user:2"}, 0) // one call into the guest per key, then one for the list
		e.RecordWrite("hostile:loop", 0)
		var timeout *policy.TimeoutError
		if err := e.Err(); !errors.As(err, &timeout) || timeout.Limit != 5*time.Millisecond ||
			!strings.Contains(err.Error(), "5ms deadline") {
			t.Errorf("Err() = %v, want a timeout at 5ms", err)
		}
	})

	t.Run("trap", func(t *testing.T) {
		e := load(t)
		if s := e.RecordWrite("hostile:trap", 0); s != policy.StrategyEager {
			t.Errorf("strategy after a trap = %v, want eager", s)
		}
		var callErr *policy.CallError
		if err := e.Err(); !errors.As(err, &callErr) || !strings.Contains(err.Error(), "unreachable") {
			t.Errorf("Err() = %v, want a *CallError for the trap", err)
		}
	})

	t.Run("memory cap", func(t *testing.T) {
		// Each 4 MiB write takes 5-10 ms, and 30-40 ms under -race: a deadline far away
		// keeps this test about memory.
		e := load(t, policy.WithCallTimeout(10*time.Second))
		// Each write leaks 4 MiB: the cap must stop it within MaxMemoryBytes / 4 MiB writes.
		for i := 0; i < policy.MaxMemoryBytes/(4<<20)+1 && e.Err() == nil; i++ {
			e.RecordWrite("hostile:grow", uint64(i))
		}
		var callErr *policy.CallError
		if err := e.Err(); !errors.As(err, &callErr) || callErr.MemoryBytes < policy.MaxMemoryBytes/2 {
			t.Fatalf("Err() = %v, want a *CallError with memory near the cap", err)
		}
	})

	t.Run("huge batch", func(t *testing.T) {
		// Building 200,000 keys is legitimate work, if a lot: slowed down by wazero's deadline
		// checks at every loop head, it takes longer than the default deadline (the Rust
		// host's fuel budget allows it). What is tested here is the lifting of a huge batch.
		e := load(t, policy.WithCallTimeout(10*time.Second))
		e.RecordWrite("hostile:huge", 0)
		b := e.PendingBatch(0)
		if len(b.Keys) != 200_000 || b.Keys[199_999] != "junk:199999" {
			t.Errorf("got a batch of %d keys, want the 200,000 the policy returns", len(b.Keys))
		}
		if err := e.Err(); err != nil {
			t.Error(err)
		}
	})
}

// waitGoroutines waits for the number of goroutines to come back to at most n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLoopingGuestTimesOut runs hand-built policies that loop forever where the host calls
// them without a method of the interface: in cabi_realloc, when a method passes a string,
// and in _initialize, at instantiation. Each must stop at the deadline like the methods.
func TestLoopingGuestTimesOut(t *testing.T) {
	const limit = 10 * time.Millisecond
	goroutines := runtime.NumGoroutine()

	t.Run("cabi_realloc", func(t *testing.T) {
		e, err := policy.LoadBytes(component(policyShape(map[string][]byte{"cabi_realloc": endlessLoop}).bytes()),
			policy.WithCallTimeout(limit))
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		if s := e.RecordWrite("user:1", 0); s != policy.StrategyEager {
			t.Errorf("strategy = %v, want eager", s)
		}
		var callErr *policy.CallError
		if err := e.Err(); !errors.As(err, &callErr) || callErr.Func != "record-write" ||
			!errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "cabi_realloc: timed out") {
			t.Errorf("Err() = %v, want a *CallError for record-write saying that cabi_realloc timed out", err)
		}
		if b := e.PendingBatch(1); !b.FlushAll {
			t.Errorf("PendingBatch = %+v, want FlushAll", b)
		}
	})

	t.Run("_initialize", func(t *testing.T) {
		shape := policyShape(nil)
		shape.funcs = append(shape.funcs, wasmFunc{body: endlessLoop})
		shape.exports = append(shape.exports, wasmExport{name: "_initialize", idx: uint32(len(shape.funcs) - 1)})
		start := time.Now()
		e, err := policy.LoadBytes(component(shape.bytes()), policy.WithCallTimeout(limit))
		if err == nil {
			_ = e.Close()
			t.Fatal("Load succeeded on a policy whose initialisation never ends")
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("Load returned after %v", elapsed)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "instantiate: _initialize timed out") {
			t.Errorf("error %q, want one saying that _initialize timed out", err)
		}
	})

	waitGoroutines(t, goroutines)
}

// TestCallTimeoutOptions: a deadline must be positive; WithoutCallTimeout removes it.
func TestCallTimeoutOptions(t *testing.T) {
	wasm, err := os.ReadFile(filepath.Join(policyDir(t), "adaptive.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{0, -time.Second} {
		if m, err := policy.Compile(wasm, policy.WithCallTimeout(d)); err == nil {
			_ = m.Close()
			t.Errorf("Compile with WithCallTimeout(%v) succeeded", d)
		} else if !strings.Contains(err.Error(), "must be greater than zero") {
			t.Errorf("WithCallTimeout(%v): error %q", d, err)
		}
	}
	// The last option wins.
	for _, opts := range [][]policy.Option{
		{policy.WithoutCallTimeout()},
		{policy.WithCallTimeout(0), policy.WithoutCallTimeout()},
		{policy.WithoutCallTimeout(), policy.WithCallTimeout(time.Second)},
	} {
		e, err := policy.LoadBytes(wasm, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if s := e.RecordWrite("user:1", 0); s != policy.StrategyTTL || e.Err() != nil {
			t.Errorf("RecordWrite = %v, Err() = %v", s, e.Err())
		}
		_ = e.Close()
	}
}

// TestTrapOnLoad: a policy whose _initialize traps (wit-component runs it on instantiation)
// must be refused by Load with an error.
func TestTrapOnLoad(t *testing.T) {
	e, err := policy.Load(testPolicy(t, "trap-on-load"))
	if err == nil {
		_ = e.Close()
		t.Fatal("Load succeeded on a policy whose initialisation traps")
	}
	if !strings.Contains(err.Error(), "instantiate") {
		t.Errorf("error %q does not say that instantiation failed", err)
	}
}
