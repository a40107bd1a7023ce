package acicache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// Following policy rollouts (docs/WIRE.md 9): the rollout record is read on announcements,
// at start, after every resubscription and at least every 10 s; a target this instance trusts
// is fetched, verified, compiled and configured on the rollout goroutine (never on the write
// path or the tick), then swapped in atomically; a pushed policy that faults
// policy_rollback_faults times is reverted here at once and rolled back fleet-wide; a status
// record tells operators what runs where.
//
// Everything read from Redis is untrusted: each field is checked before use, fetches are
// bounded, and a refusal is a reason in the status record, never a panic and never a change of
// the running policy.

const (
	statusTTLMs   = 3000   // 9.8
	statusEveryMs = 1000   // 9.8: every heartbeat
	pollMs        = 10_000 // 9.3: the record is read at least this often
	maxModules    = 4      // compiled pushed components kept, by hash
)

// installed is a policy this instance can run: compiled, with the config it runs with.
type installed struct {
	module *policy.Module
	cfg    policy.Config
	target target // empty hash: the local policy
	hash   string // SHA-256 of the component (of a local one too)
	info   policy.PolicyInfo
}

func (i *installed) pushed() bool { return !i.target.local() }

type rejection struct {
	Rollout uint64 `json:"rollout"`
	SHA256  string `json:"sha256"`
	Reason  string `json:"reason"`
}

type rollout struct {
	c              *Cache
	follow         bool // false: WithoutPolicyRollouts (SwapPolicy only)
	trust          *trust
	rollbackFaults uint64
	kCurrent       string
	kBad           string
	kStatus        string
	kBlob          string

	// swapMu serialises swaps (the rollout goroutine, SwapPolicy), and with them the changes
	// of local, current and previous.
	swapMu sync.Mutex

	mu       sync.Mutex
	local    installed
	current  installed
	previous *installed // what ran before current: where an automatic rollback returns
	acted    uint64     // the last rollout acted on
	rejected *rejection
	modules  map[string]*policy.Module // compiled components by hash, at most maxModules
	order    []string                  // modules' hashes, oldest first

	heard  atomic.Uint64 // the highest rollout announced
	resync atomic.Bool   // read the record at the next step (resubscribed, or a read failed)
	wake   chan struct{}

	// Owned by the rollout goroutine.
	read         uint64 // the highest rollout read in a record
	lastAnnRead  uint64 // ms
	lastPoll     uint64 // ms
	lastStatus   uint64 // ms
	lastReported string // the last status written, without its timestamp
	lastWarn     uint64 // ms: read failures are logged at most once per poll period
}

func newRollout(c *Cache, lp *localPolicy) (*rollout, error) {
	t, err := newTrust(c.s.publicKey, c.s.hasPublicKey, c.s.allowHashes)
	if err != nil {
		return nil, err
	}
	local := installed{module: lp.module, cfg: lp.cfg, hash: lp.hash, info: lp.info}
	return &rollout{
		c: c, trust: t, rollbackFaults: uint64(c.s.rollbackFaults),
		kCurrent: c.n.k + "policy:current", kBad: c.n.k + "policy:bad",
		kStatus: c.n.k + "policy:status:" + c.snd.source, kBlob: c.n.k + "policy:blob:",
		local: local, current: local, modules: map[string]*policy.Module{},
		wake: make(chan struct{}, 1), follow: !c.s.noRollouts,
	}, nil
}

func (r *rollout) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// onAnnouncement takes a payload from P:policy (9.3). It only notes the rollout: the record is
// the truth, read by the rollout goroutine at most once per tick.
func (r *rollout) onAnnouncement(payload string) {
	n, source, bad := decodePolicy([]byte(payload))
	if bad != "" {
		r.c.malformedMessage(bad, r.c.n.policy, len(payload))
		return
	}
	if source != r.c.snd.source {
		r.c.c.messagesReceived.Add(1)
	}
	for {
		old := r.heard.Load()
		if n <= old {
			return
		}
		if r.heard.CompareAndSwap(old, n) {
			r.poke()
			return
		}
	}
}

func (r *rollout) resubscribed() {
	r.resync.Store(true)
	r.poke()
}

func (r *rollout) reject(rollout uint64, sha string, reason string) {
	r.c.s.logger.Warn("acicache: policy rollout refused; keeping the running policy", "instance", r.c.snd.source,
		"rollout", rollout, "sha256", sha, "reason", reason)
	r.mu.Lock()
	r.rejected = &rejection{Rollout: rollout, SHA256: sha, Reason: reason}
	r.mu.Unlock()
}

// start reads the record before the cache serves: a late joiner runs the fleet's current
// policy, not its local one, when it trusts it.
func (r *rollout) start(ctx context.Context) {
	r.swapMu.Lock()
	defer r.swapMu.Unlock()
	r.resync.Store(false)
	if err := r.sync(ctx); err != nil {
		r.c.s.logger.Warn("acicache: policy rollout: cannot read the fleet's record at start; running the local policy",
			"instance", r.c.snd.source, "err", err)
		r.resync.Store(true)
	}
	r.lastPoll = r.c.nowMs()
	r.writeStatus(ctx, true)
}

// readFailed logs a failure to read or fetch, at most once per poll period: a record of the
// wrong type, say, must not flood the log at every announcement.
func (r *rollout) readFailed(err error) {
	now := r.c.nowMs()
	if r.lastWarn != 0 && now-r.lastWarn < pollMs {
		return
	}
	r.lastWarn = max(now, 1)
	r.c.s.logger.Warn("acicache: policy rollout: cannot read the record (retried on the next announcement, resubscription or poll)",
		"instance", r.c.snd.source, "err", err)
}

// loop is the rollout goroutine: one step per tick, and at once on an announcement.
func (r *rollout) loop() {
	defer r.c.wg.Done()
	t := time.NewTicker(r.c.s.tick)
	defer t.Stop()
	for {
		select {
		case <-r.c.ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		r.step()
	}
}

func (r *rollout) step() {
	c := r.c
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	r.swapMu.Lock()
	defer r.swapMu.Unlock()
	if err := r.checkFaults(ctx); err != nil {
		c.s.logger.Warn("acicache: policy rollout: the fleet rollback could not reach Redis", "instance", c.snd.source, "err", err)
	}
	now := c.nowMs()
	tickMs := uint64(max(c.s.tick.Milliseconds(), 1))
	full := r.resync.Swap(false)
	// At most one read per tick because of announcements (9.3).
	if !full && r.heard.Load() > r.read && now-r.lastAnnRead >= tickMs {
		full, r.lastAnnRead = true, now
	}
	if !full && now-r.lastPoll >= pollMs {
		r.lastPoll = now
		cur, err := c.rdb.HGet(ctx, r.kCurrent, "rollout").Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			r.readFailed(err)
		default:
			n, ok := parseRollout(cur)
			full = !ok || n != r.read // a malformed one is read whole: refused with its reason
		}
	}
	if full {
		r.lastPoll = now
		if err := r.sync(ctx); err != nil {
			r.readFailed(err)
		}
	}
	r.writeStatus(ctx, false)
}

// readCurrent reads the record's fields. Not ok: Redis failed (err), or the key is not a hash,
// which is refused as a malformed record (nil err: reading again will not help).
func (r *rollout) readCurrent(ctx context.Context) (map[string]string, bool, error) {
	f, err := r.c.rdb.HGetAll(ctx, r.kCurrent).Result()
	if wrongType(err) {
		r.reject(0, "", "malformed record: record: "+oneLine(err))
		return nil, false, nil
	}
	return f, err == nil, err
}

// sync reads the record and acts on it (9.3). An error is Redis failing: the record is read
// again later; a record or target that is refused is acted on (with a rejection).
func (r *rollout) sync(ctx context.Context) error {
	c := r.c
	heardBefore := r.heard.Load()
	f, ok, err := r.readCurrent(ctx)
	if !ok {
		return err
	}
	rec, perr := parseRecord(f)
	n := uint64(0)
	if rec != nil {
		n = rec.rollout
	} else if v, ok := parseRollout(f["rollout"]); ok {
		n = v
	}
	r.read = max(r.read, n)
	// An announcement of a rollout the record does not have (forged, or of a record since
	// deleted) must not make us read at every tick; one heard during the read is kept.
	if h := r.heard.Load(); h == heardBefore && h > r.read {
		r.heard.CompareAndSwap(h, r.read)
	}
	if len(f) == 0 {
		return nil
	}
	r.mu.Lock()
	acted := r.acted
	r.mu.Unlock()
	if perr != nil {
		if n > acted || n == 0 {
			r.mu.Lock()
			r.acted = max(r.acted, n)
			r.mu.Unlock()
			r.reject(n, "", perr.Error())
		}
		return nil
	}
	if rec.rollout <= acted {
		return nil
	}
	tg := rec.targetFor(c.snd.source)
	r.mu.Lock()
	same := r.current.target.same(tg)
	r.mu.Unlock()
	if !same {
		inst, e, reason, err := r.prepare(ctx, tg)
		if err != nil {
			return err // Redis failed: not acted on, read again
		}
		if reason == "" {
			r.install(ctx, inst, e, false)
		} else {
			r.reject(rec.rollout, tg.SHA256, reason)
		}
	}
	r.mu.Lock()
	r.acted = max(r.acted, rec.rollout)
	r.mu.Unlock()
	return nil
}

// prepare is steps 1-4 of 9.6: a target made runnable (compiled, instantiated and
// configured), or the reason it is refused. err is Redis failing.
func (r *rollout) prepare(ctx context.Context, tg target) (*installed, *policy.Engine, string, error) {
	c := r.c
	if tg.local() {
		r.mu.Lock()
		local := r.local
		r.mu.Unlock()
		e, reason := r.instantiate(&local)
		return &local, e, reason, nil
	}
	if reason := r.trust.check(c.n.prefix, c.n.namespace, tg); reason != "" {
		return nil, nil, reason, nil
	}
	why, err := c.rdb.HGet(ctx, r.kBad, tg.SHA256).Result()
	switch {
	case err == nil:
		return nil, nil, "marked bad: " + clip(why, 160), nil
	case wrongType(err):
		return nil, nil, clip("marked bad: unreadable: "+oneLine(err), 200), nil
	case !errors.Is(err, redis.Nil):
		return nil, nil, "", err
	}
	m := r.module(tg.SHA256)
	if m == nil {
		data, err := c.rdb.GetRange(ctx, r.kBlob+tg.SHA256, 0, maxComponentBytes).Bytes()
		if wrongType(err) { // refused, not retried
			return nil, nil, clip("missing: "+oneLine(err), 200), nil
		}
		if err != nil {
			return nil, nil, "", err
		}
		switch sum := sha256.Sum256(data); {
		case len(data) == 0:
			return nil, nil, "missing: no component stored under this hash", nil
		case len(data) > maxComponentBytes:
			return nil, nil, fmt.Sprintf("too large: over %d bytes", maxComponentBytes), nil
		case hex.EncodeToString(sum[:]) != tg.SHA256:
			return nil, nil, "hash mismatch: the stored bytes do not have this SHA-256", nil
		}
		if c.s.callTimeout == 0 {
			m = bundledModuleByHash(tg.SHA256) // shared by the process's caches, never closed
		}
		if m == nil {
			if m, err = policy.Compile(data, c.s.policyOptions()...); err != nil {
				return nil, nil, clip("invalid component: "+oneLine(err), 300), nil
			}
			r.keepModule(tg.SHA256, m)
		}
	}
	cfg, err := applyOverrides(c.baseCfg, tg.Config)
	if err != nil {
		return nil, nil, err.Error(), nil
	}
	inst := &installed{module: m, cfg: cfg, target: tg, hash: tg.SHA256}
	e, reason := r.instantiate(inst)
	return inst, e, reason, nil
}

// instantiate creates and configures an instance of inst (filling in its info), or says why
// it cannot run: the compiled module is untrusted code too.
func (r *rollout) instantiate(inst *installed) (*policy.Engine, string) {
	now := r.c.nowMs()
	e, err := inst.module.Instantiate()
	if err != nil {
		return nil, clip("invalid component: "+oneLine(err), 300)
	}
	inst.info = e.Describe()
	if err := e.Err(); err != nil {
		_ = e.Close()
		return nil, clip("invalid component: "+oneLine(err), 300)
	}
	if err := e.Configure(inst.cfg, now); err != nil {
		_ = e.Close()
		var ce *policy.ConfigError
		if errors.As(err, &ce) {
			return nil, clip("config: "+ce.Field+": "+ce.Message, 300)
		}
		return nil, clip("invalid component: "+oneLine(err), 300)
	}
	// A policy that cannot even report is refused here, not at the tick.
	e.Status(now)
	if err := e.Err(); err != nil {
		_ = e.Close()
		return nil, clip("invalid component: "+oneLine(err), 300)
	}
	return e, ""
}

// install is step 5 of 9.6: the swap, then the old instance's buffered keys are published at
// once (a failed publish owes a flush, sent first at the next tick: never dropped). The caller
// holds swapMu (so no module being prepared is evicted meanwhile).
func (r *rollout) install(ctx context.Context, inst *installed, e *policy.Engine, asLocal bool) {
	c := r.c
	now := c.nowMs()
	batch := c.pol.swapIn(inst.module, e, inst.cfg, c.currentRate(), now)
	r.mu.Lock()
	old := r.current
	r.previous = &old
	r.current = *inst
	if asLocal {
		r.local = *inst
	}
	r.mu.Unlock()
	r.evictModules()
	c.noteStrategy(c.pol.status(now).Strategy)
	c.c.policySwaps.Add(1)
	c.s.logger.Info("acicache: policy swapped", "instance", c.snd.source, "policy", inst.info.Name,
		"sha256", inst.hash, "pushed", inst.pushed())
	if err := c.publishBatch(ctx, batch); err != nil {
		c.s.logger.Warn("acicache: publishing the swapped-out policy's batch failed; a flush follows",
			"instance", c.snd.source, "err", err)
	}
	r.poke() // report at once
}

// module returns the compiled component of hash, if kept.
func (r *rollout) module(hash string) *policy.Module {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.modules[hash]; m != nil {
		return m
	}
	for _, i := range []*installed{&r.current, r.previous, &r.local} {
		if i != nil && i.hash == hash && i.module != nil {
			return i.module
		}
	}
	return nil
}

// keepModule keeps a module compiled for hash (the caller holds swapMu and found none).
func (r *rollout) keepModule(hash string, m *policy.Module) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.modules[hash] = m
	r.order = append(r.order, hash)
}

// evictModules closes the oldest kept modules beyond maxModules that nothing runs (local,
// current and previous are kept, so that a revert needs no fetch).
func (r *rollout) evictModules() {
	r.mu.Lock()
	defer r.mu.Unlock()
	inUse := func(m *policy.Module) bool {
		return m == r.current.module || m == r.local.module || (r.previous != nil && m == r.previous.module)
	}
	for i := 0; len(r.order) > maxModules && i < len(r.order); {
		h := r.order[i]
		if m := r.modules[h]; inUse(m) {
			i++
			continue
		} else {
			_ = m.Close()
		}
		delete(r.modules, h)
		r.order = append(r.order[:i], r.order[i+1:]...)
	}
}

func (r *rollout) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.modules {
		_ = m.Close()
	}
	r.modules, r.order = map[string]*policy.Module{}, nil
}

// checkFaults is the automatic rollback of 9.7, decided by this instance: a pushed policy that
// faulted rollbackFaults times since its swap is reverted here at once, marked bad, and the
// fleet's record moved back to its previous target if it still names the bad one.
func (r *rollout) checkFaults(ctx context.Context) error {
	c := r.c
	r.mu.Lock()
	pushed := r.current.pushed()
	r.mu.Unlock()
	if !pushed {
		return nil
	}
	faults, last := c.pol.faultInfo()
	if faults < r.rollbackFaults {
		return nil
	}
	r.mu.Lock()
	bad := r.current
	back := r.local
	if r.previous != nil && !r.previous.target.same(bad.target) {
		back = *r.previous
	}
	from := r.acted
	r.mu.Unlock()
	reason := clip(fmt.Sprintf("auto-rollback: %s: %d faults: %s", c.snd.source, faults, last), 200)
	c.s.logger.Error("acicache: pushed policy faults: reverting and rolling the fleet back", "instance", c.snd.source,
		"sha256", bad.hash, "reason", reason)
	// Locally first: nothing here waits for Redis.
	e, why := r.instantiate(&back)
	if why != "" {
		c.s.logger.Error("acicache: revert failed; returning to the local policy", "instance", c.snd.source, "reason", why)
		r.mu.Lock()
		back = r.local
		r.mu.Unlock()
		if e, why = r.instantiate(&back); why != "" {
			// The local policy cannot run either: keep the faulting one (section 7 keeps it
			// eager while it faults) and stop counting it as pushed, so this does not repeat.
			c.s.logger.Error("acicache: the local policy cannot run either", "instance", c.snd.source, "reason", why)
			r.mu.Lock()
			r.current.target = target{}
			r.mu.Unlock()
			return nil
		}
	}
	r.install(ctx, &back, e, false)
	r.mu.Lock()
	r.previous = nil // never revert into the policy that just faulted
	r.mu.Unlock()
	r.reject(from, bad.hash, reason)
	if err := c.rdb.HSet(ctx, r.kBad, bad.hash, reason).Err(); err != nil {
		return err
	}
	defer r.resync.Store(true)
	f, ok, err := r.readCurrent(ctx)
	if !ok {
		return err
	}
	rec, perr := parseRecord(f)
	if perr != nil || rec == nil || rec.rollout != from || !rec.targetFor(c.snd.source).same(bad.target) {
		return nil
	}
	name, version := "", ""
	if back.target.same(rec.previous) {
		name, version = back.info.Name, back.info.Version
	}
	bt := rec.targetFor(c.snd.source)
	next := rec.rollout + 1
	fields := []string{
		"rollout", strconv.FormatUint(next, 10),
		"sha256", rec.previous.SHA256, "config", rec.previous.Config, "sig", rec.previous.Sig,
		"previous", bt.SHA256, "previous_config", bt.Config, "previous_sig", bt.Sig,
		"canary", "",
		"name", clip(name, 64), "version", clip(version, 64),
		"by", c.snd.source, "reason", reason,
		"at", strconv.FormatFloat(unixSeconds(), 'f', 3, 64),
	}
	ann := c.snd.announcement(next)
	args := []any{strconv.FormatUint(rec.rollout, 10), c.n.policy, string(ann)}
	for _, v := range fields {
		args = append(args, v)
	}
	done, err := c.rdb.Eval(ctx, casLua, []string{r.kCurrent}, args...).Int64()
	if err != nil {
		return err
	}
	if done == 1 {
		c.c.messagesSent.Add(1)
		if c.sharded {
			// A script may not SPUBLISH outside its key's slot: its PUBLISH reaches classic-mode
			// fleets only, so a sharded fleet hears it here (docs/WIRE.md 10.1); if this fails,
			// the fleet reads the record within 10 s.
			if err := c.publish(ctx, c.n.policy, ann); err == nil {
				c.c.messagesSent.Add(1)
			}
		}
		c.s.logger.Warn("acicache: fleet rolled back", "instance", c.snd.source, "rollout", next,
			"to", rec.previous.SHA256)
	}
	return nil
}

// status is this instance's status record (9.8).
func (r *rollout) status() map[string]any {
	c := r.c
	faults := c.pol.faultCount()
	r.mu.Lock()
	defer r.mu.Unlock()
	origin := "local"
	if r.current.pushed() {
		origin = "pushed"
	}
	var rejected any
	if r.rejected != nil {
		rejected = *r.rejected
	}
	return map[string]any{
		"id": c.snd.source, "host": "go", "name": r.current.info.Name, "version": r.current.info.Version,
		"sha256": r.current.hash, "origin": origin, "rollout": r.acted, "strategy": c.Strategy().String(),
		"controller": c.isController.Load(), "faults": faults, "trust": r.trust.kind(), "rejected": rejected,
	}
}

// writeStatus writes the status record when it changed, and once per heartbeat regardless.
func (r *rollout) writeStatus(ctx context.Context, force bool) {
	c := r.c
	st := r.status()
	key, _ := json.Marshal(st)
	now := c.nowMs()
	if !force && string(key) == r.lastReported && now-r.lastStatus < statusEveryMs && r.lastStatus != 0 {
		return
	}
	st["timestamp"] = float64(time.Now().UnixMilli()) / 1000
	body, err := json.Marshal(st)
	if err != nil {
		return
	}
	if err := c.rdb.Do(ctx, "SET", r.kStatus, string(body), "PX", statusTTLMs).Err(); err == nil {
		r.lastReported, r.lastStatus = string(key), max(now, 1)
	}
}

// wrongType: the key holds another type (written by something else): a verdict, not a
// failure to answer, so the target is refused instead of retried.
func wrongType(err error) bool { return err != nil && redis.HasErrorPrefix(err, "WRONGTYPE") }

func oneLine(err error) string {
	b := []byte(err.Error())
	for i, ch := range b {
		if ch == '\n' || ch == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}

// policyInfo is what runs: describe, the component's hash, its origin, the last rollout.
func (c *Cache) policyInfo() (policy.PolicyInfo, string, string, uint64) {
	r := c.ro
	r.mu.Lock()
	defer r.mu.Unlock()
	origin := "local"
	if r.current.pushed() {
		origin = "pushed"
	}
	return r.current.info, r.current.hash, origin, r.acted
}

// PolicyStatus returns this instance's status record (docs/WIRE.md 9.8) as it is written
// now (with WithoutPolicyRollouts it is not written, but tells what runs all the same).
func (c *Cache) PolicyStatus() map[string]any {
	st := c.ro.status()
	st["timestamp"] = float64(time.Now().UnixMilli()) / 1000
	return st
}

// SwapPolicy replaces the running policy with the component wasm, configured with the cache's
// own config plus overrides (a JSON object of WIT config fields, as a rollout's config, or
// ""). It compiles on the calling goroutine, then swaps atomically: every write is recorded by
// exactly one of the two policies, the new one takes over the fleet role, the strategy in force
// and the measured rate, and the keys the old one buffered are published at once. The new
// policy becomes this instance's local policy (what a rollout to the local policies returns
// to). A component or config that cannot run is refused (*ConfigError, field "policy") and the
// running policy stays.
func (c *Cache) SwapPolicy(ctx context.Context, wasm []byte, overrides string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	refuse := func(reason string) error {
		return &ConfigError{Field: "policy", Value: fmt.Sprintf("%d bytes", len(wasm)), Reason: reason}
	}
	if overrides != "" && !configFieldOK(overrides) {
		return refuse("config: not a JSON object of at most 4096 bytes")
	}
	cfg, err := applyOverrides(c.baseCfg, overrides)
	if err != nil {
		return refuse(err.Error())
	}
	r := c.ro
	r.swapMu.Lock()
	defer r.swapMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	sum := sha256.Sum256(wasm)
	hash := hex.EncodeToString(sum[:])
	m := r.module(hash)
	if m == nil {
		if m, err = policy.Compile(wasm, c.s.policyOptions()...); err != nil {
			return refuse("invalid component: " + oneLine(err))
		}
		r.keepModule(hash, m)
	}
	inst := &installed{module: m, cfg: cfg, hash: hash}
	e, reason := r.instantiate(inst)
	if reason != "" {
		return refuse(reason)
	}
	r.install(ctx, inst, e, true)
	return nil
}
