// Package policy runs an aci-cache strategy engine: a WebAssembly component of the WIT world
// aci:cache/engine@0.1.0, which exports the interface aci:cache/policy@0.1.0 and imports
// nothing.
//
// Go has no component runtime, so this package takes the component's single core module out
// of the component binary, runs it with wazero, and lowers and lifts the canonical ABI itself
// for exactly this interface's types. The engine never reads a clock: every time-dependent
// method takes nowMs, milliseconds on a clock the host chooses.
//
// A call that traps (a guest bug, or the guest running out of memory) leaves the instance
// unusable, as the component model requires. Only Configure returns an error, so the other
// methods then return safe values instead (StrategyEager, so that the host publishes every
// write itself; one batch with FlushAll, since buffered keys are lost) and Err reports the
// failure. A host checks Err once per tick and replaces the engine.
//
// Each instance's linear memory is capped at MaxMemoryBytes, and each call into it runs under a
// deadline (DefaultCallTimeout unless WithCallTimeout says otherwise): wazero has no fuel, so
// the CPU budget that the Rust host counts in fuel is wall-clock time here. A call still
// running at its deadline is stopped and fails like a trap, with a *CallError whose Err is a
// *TimeoutError (errors.Is(err, context.DeadlineExceeded) holds).
package policy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

// MaxMemoryBytes caps each instance's linear memory, as the Rust host's sandbox does: a policy
// is untrusted code, and one that leaks must trap (and so fall back to eager) instead of
// taking the process's memory. 32 MiB holds a full default batch (1 MiB) many times over.
const MaxMemoryBytes = 32 << 20

const maxMemoryPages = MaxMemoryBytes / 65536

// DefaultCallTimeout is the deadline of each call into a policy unless WithCallTimeout sets
// another. It stands for the Rust host's fuel budget (20M fuel, some 10-40 ms of wasm): far
// above what a call costs (microseconds), far below what a host can wait for. Long lists come
// closer: under the deadline checks, a record-writes of 5,000 keys takes some 40 ms.
const DefaultCallTimeout = 50 * time.Millisecond

// Host-side work (compiling, closing) never waits for the guest, so it runs without a
// deadline; each call into the guest gets a deadline of its own (see Engine.call).
var bg = context.Background()

// Option tunes Compile, CompileFile, Load and LoadBytes.
type Option func(*options)

type options struct {
	callTimeout time.Duration
	unbounded   bool
}

// WithCallTimeout sets the deadline of each call into the policy (default DefaultCallTimeout):
// each guest function an engine method runs (cabi_realloc once per string argument, the
// function itself, its post-return) and the policy's initialisation at Instantiate may run for
// d at most. A call still running at its deadline is stopped, and the engine fails as on a
// trap. The bound is wall-clock time, so time the goroutine waits for a CPU counts too: leave
// a wide margin over what the policy needs. d must be greater than zero (Compile fails
// otherwise); WithoutCallTimeout removes the bound.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) { o.callTimeout, o.unbounded = d, false }
}

// WithoutCallTimeout removes the deadline: a policy that loops forever then hangs the calling
// goroutine (and every later call on its engine). The deadline costs one to two microseconds
// per call into the guest, and makes loops in the guest several times slower (see the
// README); this is for policies the host trusts as it trusts its own code.
func WithoutCallTimeout() Option {
	return func(o *options) { o.callTimeout, o.unbounded = 0, true }
}

func newOptions(opts []Option) (options, error) {
	o := options{callTimeout: DefaultCallTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if !o.unbounded && o.callTimeout <= 0 {
		return o, fmt.Errorf("call timeout %v: must be greater than zero (or use WithoutCallTimeout)", o.callTimeout)
	}
	return o, nil
}

// Module is a compiled policy. Compiling is the costly step (milliseconds); each Instantiate
// is cheap and gives an independent engine, e.g. one per cache namespace.
type Module struct {
	rt          wazero.Runtime
	compiled    wazero.CompiledModule
	callTimeout time.Duration // 0: unbounded
	// watchdog bounds the calls of an instrumented module (instrument.go); nil for an
	// unbounded one, or one bounded by wazero's per-call deadline (a module the rewriter
	// does not understand).
	watchdog *watchdog
}

// Compile checks that wasm is a policy component and compiles its core module.
func Compile(wasm []byte, opts ...Option) (*Module, error) {
	m, err := compile(wasm, opts)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return m, nil
}

func compile(wasm []byte, opts []Option) (*Module, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	mods, err := coreModules(wasm)
	if err != nil {
		return nil, err
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("%w: the component embeds no core module", ErrNotPolicy)
	}
	// The bound: preferably the watchdog over instrumented code (instrument.go), which costs a
	// call next to nothing; else wazero's CloseOnContextDone, which compiles a check at every
	// loop head that leaves for Go, makes each call watch its context from a goroutine, and
	// closes the instance when the context ends. Either way only the instance is stopped, not
	// the compiled code, so the other engines of the Module are unaffected.
	useWatchdog := !o.unbounded
	if useWatchdog {
		inst := make([][]byte, len(mods))
		for i, mod := range mods {
			if inst[i], err = instrument(mod); err != nil {
				useWatchdog = false
				break
			}
		}
		if useWatchdog {
			mods = inst
		}
	}
	rt := wazero.NewRuntimeWithConfig(bg, wazero.NewRuntimeConfig().
		WithMemoryLimitPages(maxMemoryPages).
		WithCloseOnContextDone(!o.unbounded && !useWatchdog))
	// wit-component gives a world that imports nothing a single core module; should a
	// component carry helper modules too, the one with the interface's exports is the guest.
	var problems []string
	for i, mod := range mods {
		compiled, err := rt.CompileModule(bg, mod)
		if err != nil {
			problems = append(problems, fmt.Sprintf("core module %d does not compile: %v", i, err))
			continue
		}
		if err := checkExports(compiled); err != nil {
			_ = compiled.Close(bg)
			problems = append(problems, fmt.Sprintf("core module %d: %v", i, err))
			continue
		}
		m := &Module{rt: rt, compiled: compiled, callTimeout: o.callTimeout}
		if useWatchdog {
			m.watchdog = newWatchdog(o.callTimeout)
		}
		return m, nil
	}
	_ = rt.Close(bg)
	return nil, fmt.Errorf("%w: %s", ErrNotPolicy, strings.Join(problems, "; "))
}

// CompileFile is Compile for the component file at path.
func CompileFile(path string, opts ...Option) (*Module, error) {
	wasm, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	m, err := compile(wasm, opts)
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", path, err)
	}
	return m, nil
}

// checkExports verifies that a core module has the exports this host calls, with the core
// signatures the canonical ABI gives this interface's functions, and no imports. A mismatch is
// found here, at load, instead of as a trap or as garbage at the first call.
func checkExports(c wazero.CompiledModule) error {
	var problems []string
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		problems = append(problems, fmt.Sprintf("imports function %s.%s (a policy imports nothing)", mod, name))
	}
	for _, m := range c.ImportedMemories() {
		mod, name, _ := m.Import()
		problems = append(problems, fmt.Sprintf("imports memory %s.%s (a policy imports nothing)", mod, name))
	}
	if _, ok := c.ExportedMemories()[exportMemory]; !ok {
		problems = append(problems, fmt.Sprintf("no %q export", exportMemory))
	}
	fns := c.ExportedFunctions()
	checkSig := func(name string, params, results []api.ValueType) {
		def, ok := fns[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("no %q export", name))
			return
		}
		if !slices.Equal(def.ParamTypes(), params) || !slices.Equal(def.ResultTypes(), results) {
			problems = append(problems, fmt.Sprintf("%q has core signature %s, want %s", name,
				sigString(def.ParamTypes(), def.ResultTypes()), sigString(params, results)))
		}
	}
	checkSig(exportRealloc, reallocParams, []api.ValueType{i32})
	for _, f := range coreFuncs {
		checkSig(f.exportName(), f.params, f.results)
		// Post-return is optional in the canonical ABI (wit-bindgen emits it only where the
		// guest allocated results); where present it takes the function's flat results.
		if _, ok := fns[f.postReturnName()]; ok {
			checkSig(f.postReturnName(), f.results, nil)
		}
	}
	// A module of another world lacks every export: name a few, not all fourteen.
	const shown = 3
	switch {
	case len(problems) > shown:
		return fmt.Errorf("%s; and %d more problems", strings.Join(problems[:shown], "; "), len(problems)-shown)
	case len(problems) > 0:
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func sigString(params, results []api.ValueType) string {
	names := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(s, ", ") + ")"
	}
	return names(params) + " -> " + names(results)
}

// Instantiate creates a fresh engine: default config, leading, nothing measured or buffered.
// The guest's initialisation, if it has one, runs under the Module's call deadline.
func (m *Module) Instantiate() (*Engine, error) {
	e, err := m.instantiate()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return e, nil
}

func (m *Module) instantiate() (*Engine, error) {
	// An anonymous instance, so that one runtime holds any number of them. wit-component
	// runs a reactor's _initialize before any export is called; Rust policies have none.
	cfg := wazero.NewModuleConfig().WithName("")
	if m.watchdog == nil {
		cfg = cfg.WithStartFunctions("_initialize")
	} else {
		// Called below as an ordinary call, under the watchdog.
		cfg = cfg.WithStartFunctions()
	}
	ctx, cancel := withTimeout(m.deadline())
	mod, err := m.rt.InstantiateModule(ctx, m.compiled, cfg)
	cancel()
	if err != nil {
		if timedOut(err) {
			return nil, fmt.Errorf("instantiate: _initialize %w", &TimeoutError{Limit: m.callTimeout})
		}
		return nil, fmt.Errorf("instantiate: %w", err)
	}
	e := &Engine{mod: mod, mem: mod.ExportedMemory(exportMemory), realloc: mod.ExportedFunction(exportRealloc),
		timeout: m.callTimeout, module: m}
	for i, f := range coreFuncs {
		e.fns[i] = export{fn: mod.ExportedFunction(f.exportName()), post: mod.ExportedFunction(f.postReturnName())}
	}
	if m.watchdog != nil {
		stop, ok := mod.ExportedGlobal(stopGlobalName).(api.MutableGlobal)
		if !ok {
			_ = mod.Close(bg)
			return nil, fmt.Errorf("instantiate: the instrumented module lacks its stop global")
		}
		e.watch = &watched{stop: stop}
		m.watchdog.add(e.watch)
		if init := mod.ExportedFunction("_initialize"); init != nil {
			if err := e.call(init); err != nil {
				_ = e.Close()
				return nil, fmt.Errorf("instantiate: _initialize %w", err)
			}
		}
	}
	return e, nil
}

// deadline is the per-call context deadline: only for a Module bounded by wazero's deadline.
func (m *Module) deadline() time.Duration {
	if m.watchdog != nil {
		return 0
	}
	return m.callTimeout
}

// Close releases the compiled code. Engines instantiated from m must not be used afterwards.
func (m *Module) Close() error {
	if m.watchdog != nil {
		m.watchdog.close()
	}
	return m.rt.Close(bg)
}

// Load compiles the policy component at path and instantiates one engine; closing the engine
// releases everything.
func Load(path string, opts ...Option) (*Engine, error) {
	m, err := CompileFile(path, opts...)
	if err != nil {
		return nil, err
	}
	e, err := m.instantiateOwned()
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", path, err)
	}
	return e, nil
}

// LoadBytes is Load for a component already in memory.
func LoadBytes(wasm []byte, opts ...Option) (*Engine, error) {
	m, err := Compile(wasm, opts...)
	if err != nil {
		return nil, err
	}
	e, err := m.instantiateOwned()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return e, nil
}

// instantiateOwned gives m to its only engine, whose Close then releases m too.
func (m *Module) instantiateOwned() (*Engine, error) {
	e, err := m.instantiate()
	if err != nil {
		_ = m.Close()
		return nil, err
	}
	e.owner = m
	return e, nil
}

// Engine is one instance of a policy. It is safe for concurrent use: calls are serialised,
// since a component instance runs one call at a time.
type Engine struct {
	mu      sync.Mutex
	mod     api.Module
	mem     api.Memory
	realloc api.Function
	fns     [numFuncs]export
	owner   *Module // set by Load, which compiled the module for this engine alone

	// stack carries a call's flat parameters in and its flat results out; reusing it
	// saves allocating them. 16 is the canonical ABI's limit on flat parameters.
	stack [16]uint64

	timeout time.Duration // the deadline of each call into the guest; 0: unbounded
	module  *Module
	watch   *watched // set when module.watchdog bounds the calls

	err       error // first failure; the instance is unusable from then on
	flushOwed bool  // a failure lost the buffer: the next PendingBatch reports FlushAll
}

type export struct {
	fn, post api.Function // post is nil where the guest exports no post-return
}

// CallError is a trap, a call stopped at its deadline (Err is then a *TimeoutError, and
// errors.Is(err, context.DeadlineExceeded) holds), or a result that breaks the canonical ABI,
// in a call into the engine.
type CallError struct {
	Func string // WIT function name, e.g. "record-write"
	Err  error
	// MemoryBytes is the size of linear memory at the failure. A guest that cannot grow its
	// memory past MaxMemoryBytes aborts with a bare "unreachable"; this tells that case apart.
	MemoryBytes uint32
}

func (e *CallError) Error() string {
	return fmt.Sprintf("policy: %s failed (linear memory %.1f of %d MiB), engine unusable: %v",
		e.Func, float64(e.MemoryBytes)/(1<<20), MaxMemoryBytes>>20, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// TimeoutError says that a call into the policy was still running at its deadline (see
// WithCallTimeout) and was stopped. It is wrapped in the *CallError that Err reports.
type TimeoutError struct {
	Limit time.Duration // the deadline per call
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("timed out: still running at the %v deadline per call", e.Limit)
}

// Is makes errors.Is(err, context.DeadlineExceeded) hold.
func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// timedOut tells whether err is wazero stopping a call at its context's deadline.
func timedOut(err error) bool {
	var exit *sys.ExitError
	return errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeDeadlineExceeded
}

// ErrClosed is the Err of an engine after Close.
var ErrClosed = errors.New("policy: engine closed")

// Err returns the failure that made the engine unusable, or nil while it works.
func (e *Engine) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// Close releases the instance (and, for an engine from Load, its compiled module).
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = ErrClosed
	}
	if e.watch != nil {
		e.module.watchdog.remove(e.watch)
	}
	err := e.mod.Close(bg)
	if e.owner != nil {
		if cerr := e.owner.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

func (e *Engine) fail(i fnIndex, err error) {
	if e.err == nil {
		e.err = &CallError{Func: coreFuncs[i].name, Err: err, MemoryBytes: e.mem.Size()}
		e.flushOwed = true
	}
}

// call runs the guest function f, its flat parameters in e.stack, under a deadline of its
// own. Each call into the guest gets the whole e.timeout (a method makes one per string it
// passes, for cabi_realloc, one for the function and one for its post-return), so that the
// host's share of a long list of keys never counts against the bound, only guest code that
// runs too long. Past the deadline wazero closes this engine's instance, and only it: the
// guest stops at its next loop head or return and f fails with a *sys.ExitError, reported
// here as a *TimeoutError.
func (e *Engine) call(f api.Function) error {
	if w := e.watch; w != nil {
		w.calls.Add(1)
		err := f.CallWithStack(bg, e.stack[:])
		w.calls.Add(1)
		if err != nil && w.killed.Load() {
			return &TimeoutError{Limit: e.timeout}
		}
		return err
	}
	ctx, cancel := withTimeout(e.timeout)
	err := f.CallWithStack(ctx, e.stack[:])
	// wazero's goroutine that watched ctx has returned with the call; cancel stops the timer.
	cancel()
	if err != nil && timedOut(err) {
		return &TimeoutError{Limit: e.timeout}
	}
	return err
}

func noCancel() {}

// withTimeout is context.WithTimeout, or no deadline where d is 0 (WithoutCallTimeout).
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	if d == 0 {
		return bg, noCancel
	}
	return context.WithTimeout(bg, d)
}

// invoke calls function i with its flat parameters already in e.stack and leaves its flat
// results there. It reports false once the engine has failed.
func (e *Engine) invoke(i fnIndex) bool {
	if e.err != nil {
		return false
	}
	if err := e.call(e.fns[i].fn); err != nil {
		e.fail(i, err)
		return false
	}
	return true
}

// postReturn lets the guest free what it allocated for function i's results, which must have
// been copied out already. ret is the function's flat result.
func (e *Engine) postReturn(i fnIndex, ret uint64) {
	if post := e.fns[i].post; post != nil && e.err == nil {
		e.stack[0] = ret
		if err := e.call(post); err != nil {
			e.fail(i, fmt.Errorf("post-return: %w", err))
		}
	}
}

// memory returns all of linear memory. The view is valid until the guest runs again (it may
// grow memory), which is long enough to lift one call's results.
func (e *Engine) memory() []byte {
	m, _ := e.mem.Read(0, e.mem.Size())
	return m
}

// alloc asks the guest for size bytes with cabi_realloc; the guest owns them once they are
// passed as an argument.
func (e *Engine) alloc(align, size uint32) (uint32, error) {
	e.stack[0], e.stack[1], e.stack[2], e.stack[3] = 0, 0, uint64(align), uint64(size)
	if err := e.call(e.realloc); err != nil {
		return 0, fmt.Errorf("cabi_realloc: %w", err)
	}
	ptr := uint32(e.stack[0])
	if ptr%align != 0 || uint64(ptr)+uint64(size) > uint64(e.mem.Size()) {
		return 0, fmt.Errorf("cabi_realloc returned %#x for %d bytes (align %d), outside memory or misaligned", ptr, size, align)
	}
	return ptr, nil
}

// lowerString copies s into guest memory as a WIT string (UTF-8).
func (e *Engine) lowerString(s string) (ptr, n uint32, err error) {
	s = validUTF8(s)
	if uint64(len(s)) > math.MaxUint32 {
		return 0, 0, fmt.Errorf("string of %d bytes exceeds 32-bit memory", len(s))
	}
	n = uint32(len(s))
	if ptr, err = e.alloc(1, n); err != nil {
		return 0, 0, err
	}
	e.mem.WriteString(ptr, s) // alloc checked the range
	return ptr, n, nil
}

// lowerStrings copies keys into guest memory as a list<string>: the list of (ptr, len) pairs
// first, then each string, every one its own allocation since the guest frees them one by one.
func (e *Engine) lowerStrings(keys []string) (ptr, n uint32, err error) {
	if uint64(len(keys))*stringSize > math.MaxUint32 {
		return 0, 0, fmt.Errorf("list of %d strings exceeds 32-bit memory", len(keys))
	}
	n = uint32(len(keys))
	if ptr, err = e.alloc(stringAlign, n*stringSize); err != nil {
		return 0, 0, err
	}
	for i, k := range keys {
		sp, sn, err := e.lowerString(k)
		if err != nil {
			return 0, 0, err
		}
		at := ptr + uint32(i)*stringSize
		e.mem.WriteUint32Le(at, sp)
		e.mem.WriteUint32Le(at+4, sn)
	}
	return ptr, n, nil
}

// strategyCall invokes function i, whose parameters are in place, and lifts its strategy.
func (e *Engine) strategyCall(i fnIndex) Strategy {
	if !e.invoke(i) {
		return StrategyEager
	}
	ret := e.stack[0]
	s, err := liftStrategy(uint32(ret))
	if err != nil {
		e.fail(i, err)
		return StrategyEager
	}
	e.postReturn(i, ret)
	return s
}

// returnArea invokes function i, whose parameters are in place, and returns its return area
// and the whole memory it lies in. ok is false once the engine has failed.
func (e *Engine) returnArea(i fnIndex, size, align uint32) (area, mem []byte, ret uint64, ok bool) {
	if !e.invoke(i) {
		return nil, nil, 0, false
	}
	ret = e.stack[0]
	mem = e.memory()
	area, err := region(mem, uint32(ret), size, align)
	if err != nil {
		e.fail(i, fmt.Errorf("return area: %w", err))
		return nil, nil, 0, false
	}
	return area, mem, ret, true
}

// Describe returns the policy's name and version.
func (e *Engine) Describe() PolicyInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	area, mem, ret, ok := e.returnArea(fnDescribe, policyInfoSize, policyInfoAlign)
	if !ok {
		return PolicyInfo{}
	}
	name, err := liftStringAt(mem, area, 0)
	if err != nil {
		e.fail(fnDescribe, fmt.Errorf("name: %w", err))
		return PolicyInfo{}
	}
	version, err := liftStringAt(mem, area, 8)
	if err != nil {
		e.fail(fnDescribe, fmt.Errorf("version: %w", err))
		return PolicyInfo{}
	}
	e.postReturn(fnDescribe, ret)
	return PolicyInfo{Name: name, Version: version}
}

// DefaultConfig returns the config in force when an instance starts.
func (e *Engine) DefaultConfig() Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	area, _, ret, ok := e.returnArea(fnDefaultConfig, configSize, configAlign)
	if !ok {
		return Config{}
	}
	initial, err := liftStrategy(uint32(area[36]))
	if err != nil {
		e.fail(fnDefaultConfig, fmt.Errorf("initial-strategy: %w", err))
		return Config{}
	}
	cfg := Config{
		LowThreshold:    f64At(area, 0),
		HighThreshold:   f64At(area, 8),
		WindowMs:        int32(u32At(area, 16)),
		HoldMs:          int32(u32At(area, 20)),
		BatchIntervalMs: int32(u32At(area, 24)),
		BatchMaxKeys:    int32(u32At(area, 28)),
		BatchMaxBytes:   int32(u32At(area, 32)),
		InitialStrategy: initial,
	}
	e.postReturn(fnDefaultConfig, ret)
	return cfg
}

// Configure validates cfg and, if valid, puts it in force at nowMs: the rate measurement
// restarts, the strategy becomes cfg.InitialStrategy and the engine leads. A refused config
// changes nothing and comes back as a *ConfigError naming the first invalid field. An
// InitialStrategy outside the three strategies cannot be passed to the engine at all, so it
// is refused here, before the engine checks the other fields.
func (e *Engine) Configure(cfg Config, nowMs uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if !cfg.InitialStrategy.valid() {
		return &ConfigError{Field: "initial-strategy",
			Message: fmt.Sprintf("must be ttl, batched or eager, got %d", uint8(cfg.InitialStrategy))}
	}
	s := &e.stack
	s[0], s[1] = api.EncodeF64(cfg.LowThreshold), api.EncodeF64(cfg.HighThreshold)
	s[2], s[3], s[4] = api.EncodeI32(cfg.WindowMs), api.EncodeI32(cfg.HoldMs), api.EncodeI32(cfg.BatchIntervalMs)
	s[5], s[6] = api.EncodeI32(cfg.BatchMaxKeys), api.EncodeI32(cfg.BatchMaxBytes)
	s[7], s[8] = uint64(cfg.InitialStrategy), nowMs
	area, mem, ret, ok := e.returnArea(fnConfigure, configResultSize, configResultAlign)
	if !ok {
		return e.err
	}
	var result error
	switch area[0] {
	case 0: // ok
	case 1: // err(config-error)
		field, err := liftStringAt(mem, area, 4)
		if err != nil {
			e.fail(fnConfigure, fmt.Errorf("config-error.field: %w", err))
			return e.err
		}
		message, err := liftStringAt(mem, area, 12)
		if err != nil {
			e.fail(fnConfigure, fmt.Errorf("config-error.message: %w", err))
			return e.err
		}
		result = &ConfigError{Field: field, Message: message}
	default:
		e.fail(fnConfigure, fmt.Errorf("result discriminant %d out of range", area[0]))
		return e.err
	}
	e.postReturn(fnConfigure, ret)
	if e.err != nil {
		return e.err
	}
	return result
}

// RecordWrite counts one write made by this instance and returns the strategy in force after
// it. Under StrategyBatched the engine buffers key; under StrategyEager the host publishes
// key itself. A key that is not valid UTF-8 has each invalid byte replaced by U+FFFD, since
// a WIT string (like a JSON one on the wire) must be UTF-8.
func (e *Engine) RecordWrite(key string, nowMs uint64) Strategy {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return StrategyEager
	}
	ptr, n, err := e.lowerString(key)
	if err != nil {
		e.fail(fnRecordWrite, err)
		return StrategyEager
	}
	e.stack[0], e.stack[1], e.stack[2] = uint64(ptr), uint64(n), nowMs
	return e.strategyCall(fnRecordWrite)
}

// RecordWrites is RecordWrite for each key in order, all at nowMs, in one call; it returns
// the strategy after the last key. Hosts whose writes are many use it once per tick.
func (e *Engine) RecordWrites(keys []string, nowMs uint64) Strategy {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return StrategyEager
	}
	ptr, n, err := e.lowerStrings(keys)
	if err != nil {
		e.fail(fnRecordWrites, err)
		return StrategyEager
	}
	e.stack[0], e.stack[1], e.stack[2] = uint64(ptr), uint64(n), nowMs
	return e.strategyCall(fnRecordWrites)
}

// RecordRemoteWrites counts writes reported by other instances; they move the rate but are
// not buffered. It returns the strategy in force after counting them.
func (e *Engine) RecordRemoteWrites(count uint32, nowMs uint64) Strategy {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0], e.stack[1] = uint64(count), nowMs
	return e.strategyCall(fnRecordRemoteWrites)
}

// CurrentStrategy returns the strategy in force at nowMs, after any switch that time alone
// causes.
func (e *Engine) CurrentStrategy(nowMs uint64) Strategy {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0] = nowMs
	return e.strategyCall(fnCurrentStrategy)
}

// WriteRate returns fleet writes per second over the window ending at nowMs (0 once the
// engine has failed).
func (e *Engine) WriteRate(nowMs uint64) float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0] = nowMs
	if !e.invoke(fnWriteRate) {
		return 0
	}
	ret := e.stack[0]
	e.postReturn(fnWriteRate, ret)
	return liftF64(ret)
}

// PendingBatch drains the buffer when a batch is due and returns it; otherwise it returns no
// keys. After the engine has failed, the first call returns FlushAll (the buffered keys are
// lost) and later ones return nothing.
func (e *Engine) PendingBatch(nowMs uint64) Batch {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0] = nowMs
	area, mem, ret, ok := e.returnArea(fnPendingBatch, batchSize, batchAlign)
	if ok {
		keys, err := liftStrings(mem, u32At(area, 0), u32At(area, 4))
		if err != nil {
			e.fail(fnPendingBatch, fmt.Errorf("keys: %w", err))
		} else {
			b := Batch{Keys: keys, FlushAll: liftBool(area[8])}
			e.postReturn(fnPendingBatch, ret)
			if e.err == nil {
				return b
			}
		}
	}
	if e.flushOwed {
		e.flushOwed = false
		return Batch{FlushAll: true}
	}
	return Batch{}
}

// Status returns everything a host observes at nowMs, in one call.
func (e *Engine) Status(nowMs uint64) Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0] = nowMs
	area, _, ret, ok := e.returnArea(fnStatus, snapshotSize, snapshotAlign)
	if ok {
		s, err := liftStrategy(uint32(area[0]))
		if err != nil {
			e.fail(fnStatus, fmt.Errorf("strategy: %w", err))
		} else {
			snap := Snapshot{
				Strategy:     s,
				WriteRate:    f64At(area, 8),
				BufferedKeys: u32At(area, 16),
				BatchDue:     liftBool(area[20]),
				Switches:     u64At(area, 24),
				Following:    liftBool(area[32]),
			}
			e.postReturn(fnStatus, ret)
			if e.err == nil {
				return snap
			}
		}
	}
	// Consistent with PendingBatch's fallback: eager, and a batch due until the flush is taken.
	return Snapshot{Strategy: StrategyEager, BatchDue: e.flushOwed}
}

// Follow puts the engine in follower mode: from now on its strategy is the last one given
// here (the fleet controller's decision). Writes are still counted and buffered under
// StrategyBatched. It panics on a Strategy outside the three defined ones.
func (e *Engine) Follow(s Strategy, nowMs uint64) {
	if !s.valid() {
		panic(fmt.Sprintf("policy: Follow(%v): invalid strategy", s))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0], e.stack[1] = uint64(s), nowMs
	e.invoke(fnFollow)
}

// Lead puts the engine back in leader mode (the default): it decides again from its own
// measurement, starting from the strategy in force.
func (e *Engine) Lead(nowMs uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stack[0] = nowMs
	e.invoke(fnLead)
}
