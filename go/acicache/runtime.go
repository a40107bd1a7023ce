package acicache

import (
	"math"
	"strings"
	"sync"
	"time"

	"github.com/aci-cache/aci-cache/go/policy"
)

// policyRuntime owns the policy instance and applies docs/WIRE.md section 7: a fault (trap,
// deadline, a refused re-configure) answers eager for one window, drops the instance, and
// the next call after that window creates a fresh one configured and following as before;
// after 3 faults in a row the wait doubles (window x 2^n, n capped at 6). Keys the dead
// instance buffered are lost, so the next drain reports FlushAll.
//
// Calls are short and never overlap I/O: the lock is only held across the guest call.
type policyRuntime struct {
	mu        sync.Mutex
	module    *policy.Module
	engine    *policy.Engine // nil while faulted
	cfg       policy.Config
	following bool
	followed  policy.Strategy

	faults       uint64 // since the running policy was loaded (New or the last swap)
	inARow       int
	retryAtMs    uint64 // no instance before this
	healthySince uint64
	flushOwed    bool
	lastErr      error
	onFault      func(error)
}

func newPolicyRuntime(m *policy.Module, cfg policy.Config, nowMs uint64) (*policyRuntime, error) {
	e, err := m.Instantiate()
	if err != nil {
		return nil, err
	}
	if err := e.Configure(cfg, nowMs); err != nil {
		_ = e.Close()
		return nil, err
	}
	return &policyRuntime{module: m, engine: e, cfg: cfg, healthySince: nowMs}, nil
}

func (r *policyRuntime) windowMs() uint64 { return uint64(max(r.cfg.WindowMs, 1)) }

// ready returns the live engine, creating a fresh one when the fault wait has passed. Called
// with mu held.
func (r *policyRuntime) ready(nowMs uint64) *policy.Engine {
	if r.engine != nil {
		if err := r.engine.Err(); err != nil {
			r.fault(err, nowMs)
			return nil
		}
		if r.inARow > 0 && nowMs >= r.healthySince+r.windowMs() {
			r.inARow = 0
		}
		return r.engine
	}
	if nowMs < r.retryAtMs {
		return nil
	}
	e, err := r.module.Instantiate()
	if err == nil {
		err = e.Configure(r.cfg, nowMs)
		if err == nil && r.following {
			e.Follow(r.followed, nowMs)
			err = e.Err()
		}
		if err != nil {
			_ = e.Close()
		}
	}
	if err != nil {
		r.fault(err, nowMs)
		return nil
	}
	r.engine, r.healthySince = e, nowMs
	return e
}

func (r *policyRuntime) fault(err error, nowMs uint64) {
	if r.engine != nil {
		_ = r.engine.Close()
		r.engine = nil
	}
	r.faults++
	r.inARow++
	r.flushOwed = true
	r.lastErr = err
	wait := r.windowMs()
	if r.inARow > 3 {
		wait <<= min(r.inARow-3, 6)
	}
	r.retryAtMs = nowMs + wait
	if r.onFault != nil {
		r.onFault(err)
	}
}

// after checks the engine once a call returned, so a fault is seen at the call that caused it.
func (r *policyRuntime) after(s policy.Strategy, nowMs uint64) policy.Strategy {
	if err := r.engine.Err(); err != nil {
		r.fault(err, nowMs)
		return policy.StrategyEager
	}
	return s
}

func (r *policyRuntime) recordWrite(key string, nowMs uint64) policy.Strategy {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.ready(nowMs)
	if e == nil {
		return policy.StrategyEager
	}
	return r.after(e.RecordWrite(key, nowMs), nowMs)
}

func (r *policyRuntime) recordRemote(count uint32, nowMs uint64) policy.Strategy {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.ready(nowMs)
	if e == nil {
		return policy.StrategyEager
	}
	return r.after(e.RecordRemoteWrites(count, nowMs), nowMs)
}

// status is the tick's snapshot (eager while faulted).
func (r *policyRuntime) status(nowMs uint64) policy.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.ready(nowMs)
	if e == nil {
		return policy.Snapshot{Strategy: policy.StrategyEager, Following: r.following}
	}
	s := e.Status(nowMs)
	s.Strategy = r.after(s.Strategy, nowMs)
	return s
}

// drain returns the due batch; force drains whatever is buffered (shutdown).
func (r *policyRuntime) drain(nowMs uint64, force bool) policy.Batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b policy.Batch
	if e := r.ready(nowMs); e != nil {
		at := nowMs
		if force {
			at = nowMs + uint64(max(r.cfg.BatchIntervalMs, 0)) + 1
		}
		b = e.PendingBatch(at)
		if err := e.Err(); err != nil {
			r.fault(err, nowMs)
			b = policy.Batch{}
		}
	}
	if r.flushOwed {
		r.flushOwed = false
		return policy.Batch{FlushAll: true}
	}
	return b
}

func (r *policyRuntime) follow(s policy.Strategy, nowMs uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.following, r.followed = true, s
	if e := r.ready(nowMs); e != nil {
		e.Follow(s, nowMs)
		r.after(s, nowMs)
	}
}

func (r *policyRuntime) lead(nowMs uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.following = false
	if e := r.ready(nowMs); e != nil {
		e.Lead(nowMs)
		r.after(0, nowMs)
	}
}

func (r *policyRuntime) faultCount() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults
}

// faultInfo is the faults since the running policy was loaded and the last one, on one line.
func (r *policyRuntime) faultInfo() (uint64, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := "fault"
	if r.lastErr != nil {
		last = strings.Join(strings.Fields(r.lastErr.Error()), " ")
	}
	return r.faults, last
}

// swapIn makes fresh (an instance of m, configured with cfg) the policy, atomically with
// respect to every other call: each write is recorded by exactly one of the two instances
// (docs/WIRE.md 9.6). The fresh instance takes over the mode (following and the strategy
// followed, or leading from the strategy in force) and is primed with the measured rate, as a
// new controller is; fallbackRate stands in when the old instance is faulted. The old instance
// is drained and closed: the returned batch holds every key it buffered (FlushAll when they
// cannot be listed), for the caller to publish at once. Fault counts restart: they are the new
// policy's.
func (r *policyRuntime) swapIn(m *policy.Module, fresh *policy.Engine, cfg policy.Config, fallbackRate float64, nowMs uint64) policy.Batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.engine
	rate, strategy := fallbackRate, policy.StrategyEager
	var batch policy.Batch
	if old != nil && old.Err() == nil {
		snap := old.Status(nowMs)
		if old.Err() == nil {
			rate, strategy = snap.WriteRate, snap.Strategy
		}
		batch = drainAll(old, nowMs)
	}
	if old != nil {
		_ = old.Close()
	}
	if r.flushOwed {
		batch = policy.Batch{FlushAll: true}
	}
	if n := math.Round(rate * float64(max(cfg.WindowMs, 0)) / 1000); n >= 1 {
		fresh.RecordRemoteWrites(uint32(min(n, maxReportSize)), nowMs)
	}
	if r.following {
		fresh.Follow(r.followed, nowMs)
	} else {
		fresh.Follow(strategy, nowMs) // from the strategy in force, then decide
		fresh.Lead(nowMs)
	}
	r.module, r.engine, r.cfg = m, fresh, cfg
	r.faults, r.inARow, r.retryAtMs, r.healthySince, r.flushOwed, r.lastErr = 0, 0, 0, nowMs, false, nil
	return batch
}

// drainAll takes every key a discarded instance buffered: leaving batched makes its batch due
// (WIT pending-batch), and a batch holds at most batch-max-keys, so it may take a few calls.
func drainAll(e *policy.Engine, nowMs uint64) policy.Batch {
	e.Follow(policy.StrategyEager, nowMs)
	var keys []string
	for range 1000 {
		b := e.PendingBatch(nowMs)
		if b.FlushAll || e.Err() != nil {
			return policy.Batch{FlushAll: true}
		}
		if len(b.Keys) == 0 {
			return policy.Batch{Keys: keys}
		}
		keys = append(keys, b.Keys...)
		if len(keys) > maxKeys {
			break
		}
	}
	return policy.Batch{FlushAll: true}
}

func (r *policyRuntime) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.engine != nil {
		_ = r.engine.Close()
		r.engine = nil
	}
}

var _ = time.Second
