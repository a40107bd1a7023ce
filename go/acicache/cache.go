package acicache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// Nil is returned by Get for a key that does not exist; it is go-redis's redis.Nil, so
// errors.Is(err, redis.Nil) holds too.
const Nil = redis.Nil

// Strategy is the invalidation strategy in force: policy.StrategyTTL, StrategyBatched or
// StrategyEager.
type Strategy = policy.Strategy

// SwitchEvent is one strategy change, as Stats lists them (the last 1,000).
type SwitchEvent struct {
	At        time.Time
	From, To  Strategy
	WriteRate float64
}

// Stats are counters since New, cheap to take.
type Stats struct {
	InstanceID           string   `json:"instance_id"`
	IsController         bool     `json:"is_controller"`
	Strategy             Strategy `json:"strategy"`
	WriteRate            float64  `json:"write_rate"`
	Reads                uint64   `json:"reads"`
	L1Hits               uint64   `json:"l1_hits"`
	L1Misses             uint64   `json:"l1_misses"`
	Writes               uint64   `json:"writes"`
	Deletes              uint64   `json:"deletes"`
	MessagesSent         uint64   `json:"messages_sent"`
	PubsubReceived       uint64   `json:"pubsub_received"`
	MessagesReceived     uint64   `json:"messages_received"`
	InvalidationsApplied uint64   `json:"invalidations_applied"`
	// Flushes counts whole-L1 flushes: flush messages, detected losses, resubscriptions.
	Flushes   uint64 `json:"flushes"`
	Gaps      uint64 `json:"gaps"`
	Malformed uint64 `json:"malformed"`
	// PolicyFaults counts the running policy's faults since it was loaded (New or its swap).
	PolicyFaults uint64 `json:"policy_faults"`
	Resubscribes uint64 `json:"resubscribes"`
	// TopologyChanges counts subscriptions a Redis Cluster's topology ended (docs/WIRE.md
	// 10.3): a new master, a dropped node connection, the server ending the sharded
	// subscription.
	TopologyChanges uint64 `json:"topology_changes"`
	ControllerLost  uint64 `json:"controller_lost"`
	LagSuspensions  uint64 `json:"lag_suspensions"`
	PublishFailures uint64 `json:"publish_failures"`
	// The running policy (docs/WIRE.md 9.8): its name and version (describe), the SHA-256 of
	// its component, "local" or "pushed", the last rollout acted on, swaps since New.
	Policy        string        `json:"policy"`
	PolicyVersion string        `json:"policy_version"`
	PolicySHA256  string        `json:"policy_sha256"`
	PolicyOrigin  string        `json:"policy_origin"`
	PolicyRollout uint64        `json:"policy_rollout"`
	PolicySwaps   uint64        `json:"policy_swaps"`
	L1Serving     bool          `json:"l1_serving"`
	L1Entries     int           `json:"l1_entries"`
	Switches      []SwitchEvent `json:"-"`
}

type counters struct {
	l1Hits, l1Misses, writes, deletes, messagesSent, pubsubReceived, messagesReceived,
	invalidationsApplied, flushes, gaps, malformed, resubscribes, controllerLost,
	lagSuspensions, publishFailures, policySwaps, topologyChanges atomic.Uint64
}

// Cache is a near cache over a go-redis client with fleet-wide adaptive invalidation
// (docs/WIRE.md). It is safe for use by many goroutines.
type Cache struct {
	rdb redis.UniversalClient
	// cluster is rdb when it is a *redis.ClusterClient (docs/WIRE.md 10), else nil; sharded:
	// fleet messages travel by SPUBLISH/SSUBSCRIBE.
	cluster *redis.ClusterClient
	sharded bool
	// retryNow cuts a resubscription's backoff short (the cluster watch, cluster.go).
	retryNow chan struct{}
	s        settings
	n        *names
	// own carries the eager writes of a standalone *redis.Client (wconn.go); nil otherwise.
	own   *ownWriter
	snd   sender
	l1    *l1
	pol   *policyRuntime
	ro    *rollout // docs/WIRE.md 9
	start time.Time
	// baseCfg is the host's policy config, on which a pushed policy's overrides apply.
	baseCfg policy.Config
	c       counters

	ownTag   []byte // `,"source":"<id>"`, as our own messages carry it
	strategy atomic.Uint32
	// writeRate is the policy's fleet rate (float bits) from the last tick.
	writeRate atomic.Uint64

	invalSeq           atomic.Uint64 // last seq handed out on P:invalidation (maybe unanswered)
	inFlight           atomic.Int64  // publishes on P:invalidation holding a seq not yet answered
	settledSeq         atomic.Uint64 // the last position obtained (docs/WIRE.md 4)
	publishedSinceTick atomic.Bool
	needFlush          atomic.Bool // a publish failed: a flush goes first
	unreported         atomic.Uint64
	eagerWrites        atomic.Uint64 // writes under eager not yet counted by the policy
	remote             atomic.Uint64 // controller: reported counts, saturating

	isController       atomic.Bool
	lastControllerNews atomic.Int64 // ms
	announcedRate      atomic.Uint64
	controllerSilent   atomic.Bool // follower fell back to eager for lack of news

	servingMu  sync.Mutex
	subscribed bool
	lagging    bool

	lossMu sync.Mutex
	loss   *lossDetector

	switchMu  sync.Mutex
	switches  []SwitchEvent
	callbacks []func(from, to Strategy)

	malformedMu   sync.Mutex
	malformedSeen map[Malformed]bool

	psMu              sync.Mutex
	ps                subscriber
	reportsSubscribed bool

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	ready    chan struct{}
	readyOne sync.Once
	closeMu  sync.Mutex
	closed   atomic.Bool
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// New wraps client. It returns once the cache is subscribed and its role settled; ctx bounds
// that wait. The client stays the caller's: Close does not close it.
func New(ctx context.Context, client redis.UniversalClient, opts ...Option) (*Cache, error) {
	s := defaults()
	for _, o := range opts {
		o(&s)
	}
	if client == nil {
		return nil, &ConfigError{Field: "client", Value: "nil", Reason: "a redis.UniversalClient is required"}
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	id := s.instanceID
	if id == "" {
		id = randomHex(12)
	}
	cluster, _ := client.(*redis.ClusterClient)
	n, err := newNames(s.prefix, s.namespace, s.hasNamespace, cluster != nil, id)
	if err != nil {
		return nil, err
	}
	lp, err := loadPolicy(&s)
	if err != nil {
		return nil, err
	}
	c := &Cache{rdb: client, cluster: cluster, sharded: cluster != nil && s.clusterPubSub == ClusterSharded, s: s, n: n, snd: sender{source: id, epoch: randomHex(16)}, ownTag: []byte(`,"source":"` + id + `"`),
		l1: newL1(s.l1MaxEntries, s.l1MaxBytes), start: time.Now(), loss: newLossDetector(),
		malformedSeen: map[Malformed]bool{}, ready: make(chan struct{}), retryNow: make(chan struct{}, 1)}
	pol, err := newPolicyRuntime(lp.module, lp.cfg, 0)
	if err != nil {
		return nil, fmt.Errorf("acicache: policy: %w", err)
	}
	pol.onFault = func(err error) {
		s.logger.Warn("acicache: policy fault, eager for one window", "instance", id, "err", err)
		if c.ro != nil && c.ro.follow {
			c.ro.poke() // the automatic rollback (docs/WIRE.md 9.7) need not wait for a tick
		}
	}
	c.pol = pol
	c.baseCfg = lp.base
	c.own = newOwnWriter(client)
	if c.ro, err = newRollout(c, lp); err != nil {
		pol.close()
		return nil, err
	}
	c.strategy.Store(uint32(pol.status(0).Strategy))
	c.ctx, c.cancel = context.WithCancel(context.Background())

	c.wg.Add(1)
	go c.receive()
	select {
	case <-c.ready:
	case <-ctx.Done():
		c.cancel()
		c.wg.Wait()
		pol.close()
		return nil, fmt.Errorf("acicache: waiting for the first subscription: %w", ctx.Err())
	}
	now := c.nowMs()
	switch s.role {
	case RoleController:
		c.promote(ctx, now)
	case RoleAuto:
		if ok, err := c.rdb.SetNX(ctx, n.lease, id, s.controllerTimeout).Result(); err == nil && ok {
			c.promote(ctx, now)
		} else {
			c.demote(ctx, now)
		}
	default:
		c.demote(ctx, now)
	}
	if c.ro.follow {
		// Before serving: a late joiner runs the fleet's current policy (docs/WIRE.md 9.3).
		c.ro.start(ctx)
		c.wg.Add(1)
		go c.ro.loop()
	}
	c.wg.Add(1)
	go c.tickLoop()
	if c.cluster != nil {
		c.wg.Add(1)
		go c.watchTopology()
	}
	return c, nil
}

// localPolicy is the configured policy: what an empty rollout target runs (docs/WIRE.md 9).
type localPolicy struct {
	module *policy.Module
	cfg    policy.Config // the config it runs with (WithFixedStrategy's strategy included)
	base   policy.Config // the host's config, on which a pushed policy's overrides apply
	hash   string        // SHA-256 of the component's bytes
	info   policy.PolicyInfo
}

func (s *settings) policyOptions() []policy.Option {
	if s.callTimeout > 0 {
		return []policy.Option{policy.WithCallTimeout(s.callTimeout)}
	}
	return nil
}

func loadPolicy(s *settings) (*localPolicy, error) {
	opts := s.policyOptions()
	var m *policy.Module
	var wasm []byte
	var err error
	name := "adaptive"
	if s.fixed != nil {
		name = "fixed"
	}
	switch {
	case s.policyWasm != nil:
		wasm = s.policyWasm
		m, err = policy.Compile(wasm, opts...)
	case s.policyPath != "":
		if wasm, err = os.ReadFile(s.policyPath); err != nil {
			err = fmt.Errorf("policy: %w", err)
		} else if m, err = policy.Compile(wasm, opts...); err != nil {
			err = fmt.Errorf("policy: %s: %w", s.policyPath, errors.Unwrap(err))
		}
	case s.callTimeout == 0:
		if wasm, err = BundledPolicy(name); err == nil {
			m, err = bundledModule(name)
		}
	default:
		if wasm, err = BundledPolicy(name); err == nil {
			m, err = policy.Compile(wasm, opts...)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("acicache: %w", err)
	}
	e, err := m.Instantiate()
	if err != nil {
		return nil, fmt.Errorf("acicache: policy: %w", err)
	}
	cfg := e.DefaultConfig()
	info := e.Describe()
	err = e.Err()
	_ = e.Close()
	if err != nil {
		return nil, fmt.Errorf("acicache: policy: %w", err)
	}
	sum := sha256.Sum256(wasm)
	lp := &localPolicy{module: m, cfg: cfg, base: cfg, hash: hex.EncodeToString(sum[:]), info: info}
	if s.fixed != nil {
		lp.cfg.InitialStrategy = *s.fixed
	}
	return lp, nil
}

// InstanceID is this instance's id on the wire.
func (c *Cache) InstanceID() string { return c.snd.source }

func (c *Cache) nowMs() uint64 { return uint64(time.Since(c.start).Milliseconds()) }

// currentRate is the fleet write rate the policy measured at the last tick.
func (c *Cache) currentRate() float64 { return math.Float64frombits(c.writeRate.Load()) }

// Strategy is the strategy in force here.
func (c *Cache) Strategy() Strategy { return Strategy(c.strategy.Load()) }

// OnSwitch registers fn, called on every strategy change with the old and new strategy. It
// runs on the goroutine that noticed the change (a Set or the tick): keep it short.
func (c *Cache) OnSwitch(fn func(from, to Strategy)) {
	c.switchMu.Lock()
	c.callbacks = append(c.callbacks, fn)
	c.switchMu.Unlock()
}

func (c *Cache) noteStrategy(s Strategy) {
	old := Strategy(c.strategy.Swap(uint32(s)))
	if old == s {
		return
	}
	rate := math.Float64frombits(c.writeRate.Load())
	c.switchMu.Lock()
	if len(c.switches) >= 1000 {
		c.switches = c.switches[1:]
	}
	c.switches = append(c.switches, SwitchEvent{At: time.Now(), From: old, To: s, WriteRate: rate})
	cbs := c.callbacks
	c.switchMu.Unlock()
	c.s.logger.Info("acicache: strategy switch", "instance", c.snd.source, "from", old, "to", s, "rate", rate)
	for _, fn := range cbs {
		fn(old, s)
	}
}

func (c *Cache) check(key string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	return c.n.checkKey(key)
}

// Get returns the value of key: from L1 when present and trusted, else from Redis (then
// cached for at most the local TTL and never past the key's Redis TTL). A missing key is Nil.
func (c *Cache) Get(ctx context.Context, key string) (string, error) {
	if err := c.check(key); err != nil {
		return "", err
	}
	if v, ok := c.l1.get(key); ok {
		c.c.l1Hits.Add(1)
		return v, nil
	}
	c.c.l1Misses.Add(1)
	rkey := c.n.redisKey(key)
	tok := c.l1.beginFill(key)
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, rkey)
		pttl = p.PTTL(ctx, rkey)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", err
	}
	v, err := get.Result()
	if err != nil {
		return "", err
	}
	var ttl time.Duration
	switch d := pttl.Val(); {
	case d == -1: // no expiry: the local bound alone
		ttl = c.s.localTTL
	case d > 0:
		ttl = min(c.s.localTTL, d)
	}
	c.l1.completeFill(tok, key, v, ttl)
	return v, nil
}

// Set writes key to Redis with ttl (0: the default TTL) and tells the fleet by the strategy
// in force: eager pipelines one invalidation with the SET, batched leaves the key to the next
// batch, ttl sends nothing.
func (c *Cache) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	if err := c.check(key); err != nil {
		return err
	}
	if ttl <= 0 {
		ttl = c.s.defaultTTL
	}
	ttl = max(ttl, time.Millisecond)
	rkey := c.n.redisKey(key)
	inForce := c.Strategy()
	var err error
	if inForce == policy.StrategyEager {
		err = c.setEager(ctx, rkey, value, ttl)
	} else {
		err = c.rdb.Set(ctx, rkey, value, ttl).Err()
	}
	st := inForce
	if inForce == policy.StrategyEager {
		// Counted now, handed to the policy at the next tick (one record-remote-writes of the
		// count): under eager a write is never buffered, and only time (a hold running out)
		// can take the policy down, which the tick asks about anyway. Strategy changes are
		// the tick's to note then (a stale eager noted here could undo one).
		c.eagerWrites.Add(1)
	} else {
		st = c.pol.recordWrite(rkey, c.nowMs())
		c.noteStrategy(st)
	}
	c.unreported.Add(1)
	if err != nil {
		c.l1.invalidate(key)
		return err
	}
	if st == policy.StrategyEager && inForce != policy.StrategyEager {
		// This very write switched the policy to eager: it must not wait for a batch.
		if err := c.publishInval(ctx, func(seq uint64) []byte {
			return c.snd.invalidate([]string{rkey}, policy.StrategyEager, seq)
		}); err != nil {
			c.l1.invalidate(key)
			return err
		}
	}
	c.c.writes.Add(1)
	c.l1.putOwnWrite(key, value, min(c.s.localTTL, ttl))
	return nil
}

func (c *Cache) setEager(ctx context.Context, rkey, value string, ttl time.Duration) error {
	if c.needFlush.Load() {
		if err := c.publishFlush(ctx); err != nil {
			return err
		}
	}
	if c.own != nil {
		cn, reused, err := c.own.get(ctx)
		if cn != nil {
			seq := c.nextSeq()
			cn.msg = c.snd.appendInvalidate(cn.msg[:0], []string{rkey}, policy.StrategyEager, seq)
			cn.buf = appendPublish(appendSetPX(cn.buf[:0], rkey, value, ttl), c.n.invalidation, cn.msg)
			_, err = c.own.do(ctx, cn, reused, 2)
			c.published(err)
			return err
		}
		if err != nil {
			c.s.logger.Debug("acicache: own write connection: dial failed, writing through go-redis", "err", err)
		}
	}
	msg := c.snd.invalidate([]string{rkey}, policy.StrategyEager, c.nextSeq())
	err := c.writeThenPublish(ctx, func(p redis.Pipeliner) { p.Set(ctx, rkey, value, ttl) }, msg)
	// Any error counts: the SET may have landed without its invalidation, or the pipeline was
	// abandoned unanswered (a context that ended, a hook's error: the PUBLISH's own Err is
	// then nil).
	c.published(err)
	return err
}

// writeThenPublish runs write, then publishes msg on P:invalidation, the publish reaching Redis
// only after the write: a receiver that re-reads the key on the invalidation must find the new
// value, or it would cache the old one until its local TTL. On one server (a *redis.Client,
// failover clients included) one pipeline keeps that order. A cluster or ring client sends each
// node's part of a pipeline concurrently, and the key and the channel live on different nodes:
// there the write is answered before the publish goes out (two round trips, as the Rust host
// does on a cluster).
func (c *Cache) writeThenPublish(ctx context.Context, write func(redis.Pipeliner), msg []byte) error {
	if _, single := c.rdb.(*redis.Client); !single {
		if _, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { write(p); return nil }); err != nil {
			return err
		}
		return c.publish(ctx, c.n.invalidation, msg)
	}
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		write(p)
		p.Publish(ctx, c.n.invalidation, msg)
		return nil
	})
	return err
}

// nextSeq hands out the seq of a message about to be published on P:invalidation, its publish
// counted in flight (before the seq is taken) until published reports how it ended.
func (c *Cache) nextSeq() uint64 {
	c.inFlight.Add(1)
	c.publishedSinceTick.Store(true)
	return c.invalSeq.Add(1)
}

// published ends a publish counted by nextSeq once Redis answered it or the call gave up
// (err). A failed one schedules the flush (docs/WIRE.md 4) before its seq can settle.
func (c *Cache) published(err error) {
	if err != nil {
		c.publishFailed(err)
	} else {
		c.c.messagesSent.Add(1)
	}
	c.inFlight.Add(-1)
}

// position is the inval_seq a mark, strategy_update or write_report may announce: a seq whose
// publish, and every earlier one, has been answered (docs/WIRE.md 4). Announcing a seq still in
// flight would let the position overtake its message (a write held by a slow node, a
// redirect, or a pool connection that sends later than the tick's), and receivers would flush
// for a loss that is not one. Every seq is handed out while its publish is counted in
// inFlight, so if none is in flight after q was read, every seq up to q was answered
// (sync/atomic is sequentially consistent).
func (c *Cache) position() uint64 {
	q := c.invalSeq.Load()
	if c.inFlight.Load() != 0 {
		return c.settledSeq.Load()
	}
	for {
		s := c.settledSeq.Load()
		if s >= q || c.settledSeq.CompareAndSwap(s, q) {
			return max(s, q)
		}
	}
}

func (c *Cache) publishFailed(err error) {
	c.c.publishFailures.Add(1)
	if !c.needFlush.Swap(true) {
		c.s.logger.Warn("acicache: publish failed; a flush will go first once Redis answers", "instance", c.snd.source, "err", err)
	}
}

// publishInval publishes one message on P:invalidation with the next seq, after the flush
// owed by an earlier failed publish (docs/WIRE.md 4).
func (c *Cache) publishInval(ctx context.Context, build func(seq uint64) []byte) error {
	if c.needFlush.Load() {
		if err := c.publishFlush(ctx); err != nil {
			return err
		}
	}
	msg := build(c.nextSeq())
	err := c.publish(ctx, c.n.invalidation, msg)
	c.published(err)
	return err
}

func (c *Cache) publishFlush(ctx context.Context) error {
	err := c.publish(ctx, c.n.invalidation, c.snd.flush(c.nextSeq()))
	if err == nil {
		c.needFlush.Store(false)
	}
	c.published(err) // failed, the flush is still owed
	return err
}

// Delete deletes key from Redis and tells the fleet at once, whatever the strategy. It
// reports whether the key existed.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	if err := c.check(key); err != nil {
		return false, err
	}
	rkey := c.n.redisKey(key)
	c.l1.invalidate(key)
	if c.needFlush.Load() {
		if err := c.publishFlush(ctx); err != nil {
			return false, err
		}
	}
	var existed bool
	var err error
	var cn *ownConn
	var reused bool
	if c.own != nil {
		cn, reused, _ = c.own.get(ctx)
	}
	if cn != nil {
		seq := c.nextSeq()
		cn.msg = c.snd.appendInvalidate(cn.msg[:0], []string{rkey}, policy.StrategyEager, seq)
		cn.buf = appendPublish(appendDel(cn.buf[:0], rkey), c.n.invalidation, cn.msg)
		var n int64
		n, err = c.own.do(ctx, cn, reused, 2)
		existed = n > 0
	} else {
		msg := c.snd.invalidate([]string{rkey}, policy.StrategyEager, c.nextSeq())
		var del *redis.IntCmd
		err = c.writeThenPublish(ctx, func(p redis.Pipeliner) { del = p.Del(ctx, rkey) }, msg)
		existed = del.Val() > 0
	}
	c.published(err) // as in setEager
	// A fill that read the old value just before the DEL may have landed.
	c.l1.invalidate(key)
	if err != nil {
		return false, err
	}
	c.c.deletes.Add(1)
	return existed, nil
}

// Flush deletes this namespace's keys from Redis (SCAN + UNLINK, on every master of a
// cluster) and drops every instance's L1 at once (one flush message). Without a namespace
// there is no key space of ours to delete: use FlushL1.
func (c *Cache) Flush(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.n.keyPrefix == "" {
		return &ConfigError{Field: "namespace", Value: "", Reason: "Flush deletes the namespace's keys, and there is no namespace (FlushL1 drops the L1s only)"}
	}
	pattern := c.n.keyPrefix + "*"
	scan := func(ctx context.Context, node redis.UniversalClient) error {
		it := node.Scan(ctx, 0, pattern, 1000).Iterator()
		batch := make([]string, 0, 1000)
		for it.Next(ctx) {
			batch = append(batch, it.Val())
			if len(batch) == cap(batch) {
				if err := node.Unlink(ctx, batch...).Err(); err != nil {
					return err
				}
				batch = batch[:0]
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		if len(batch) > 0 {
			return node.Unlink(ctx, batch...).Err()
		}
		return nil
	}
	var err error
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		// Keys of a cluster are per master; UNLINK of several keys must stay within a slot, so
		// delete one at a time there.
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			it := node.Scan(ctx, 0, pattern, 1000).Iterator()
			for it.Next(ctx) {
				if err := node.Unlink(ctx, it.Val()).Err(); err != nil {
					return err
				}
			}
			return it.Err()
		})
	} else {
		err = scan(ctx, c.rdb)
	}
	if err != nil {
		return err
	}
	return c.FlushL1(ctx)
}

// FlushL1 drops every instance's L1 (this one's at once, the others' on the flush message);
// Redis is not touched.
func (c *Cache) FlushL1(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.l1.flush()
	c.c.flushes.Add(1)
	return c.publishFlush(ctx)
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	hits, misses := c.c.l1Hits.Load(), c.c.l1Misses.Load()
	c.switchMu.Lock()
	sw := append([]SwitchEvent(nil), c.switches...)
	c.switchMu.Unlock()
	info, hash, origin, rollout := c.policyInfo()
	return Stats{
		Policy: info.Name, PolicyVersion: info.Version, PolicySHA256: hash, PolicyOrigin: origin,
		PolicyRollout: rollout, PolicySwaps: c.c.policySwaps.Load(),
		InstanceID: c.snd.source, IsController: c.isController.Load(), Strategy: c.Strategy(),
		WriteRate: math.Float64frombits(c.writeRate.Load()),
		Reads:     hits + misses, L1Hits: hits, L1Misses: misses,
		Writes: c.c.writes.Load(), Deletes: c.c.deletes.Load(), MessagesSent: c.c.messagesSent.Load(),
		PubsubReceived: c.c.pubsubReceived.Load(), MessagesReceived: c.c.messagesReceived.Load(),
		InvalidationsApplied: c.c.invalidationsApplied.Load(), Flushes: c.c.flushes.Load(),
		Gaps: c.c.gaps.Load(), Malformed: c.c.malformed.Load(), PolicyFaults: c.pol.faultCount(),
		Resubscribes: c.c.resubscribes.Load(), TopologyChanges: c.c.topologyChanges.Load(), ControllerLost: c.c.controllerLost.Load(),
		LagSuspensions: c.c.lagSuspensions.Load(), PublishFailures: c.c.publishFailures.Load(),
		L1Serving: c.l1.serving.Load(), L1Entries: c.l1.len(), Switches: sw,
	}
}

// Close publishes what is pending (the buffered batch), releases the lease if held, and stops
// the background work. The redis client is left open. ctx bounds the final publishes.
func (c *Cache) Close(ctx context.Context) error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed.Swap(true) {
		return nil
	}
	c.cancel()
	// go-redis does not end a blocked read on ctx: closing the subscription does.
	c.psMu.Lock()
	if c.ps != nil {
		_ = c.ps.close()
	}
	c.psMu.Unlock()
	c.wg.Wait()
	var errs []error
	if c.ro.follow {
		// A stopped instance leaves the status listing at once, not after the record's TTL.
		dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_ = c.rdb.Del(dctx, c.ro.kStatus).Err()
		dcancel()
	}
	errs = append(errs, c.publishBatch(ctx, c.pol.drain(c.nowMs(), true)))
	if c.isController.Load() && c.s.role == RoleAuto {
		errs = append(errs, releaseScript.Run(ctx, c.rdb, []string{c.n.lease}, c.snd.source).Err())
	}
	c.l1.suspend()
	if c.own != nil {
		c.own.close()
	}
	c.ro.swapMu.Lock() // no SwapPolicy in flight
	c.pol.close()
	c.ro.close()
	c.ro.swapMu.Unlock()
	return errors.Join(errs...)
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
