package acicache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

var bg = context.Background()

func ns(t testing.TB) string { return "t" + randomHex(8) }

func TestConfigErrorsNameTheField(t *testing.T) {
	rdb := newClient(t)
	for _, tc := range []struct {
		opt   Option
		field string
	}{
		{WithNamespace("a:b"), "namespace"},
		{WithNamespace(""), "namespace"},
		{WithChannelPrefix("a b"), "channel_prefix"},
		{WithInstanceID("x:y"), "instance_id"},
		{WithTick(0), "tick"},
		{WithLocalTTL(-time.Second), "local_ttl"},
		{WithL1Size(0, 1), "l1_max_entries"},
		{WithFixedStrategy(policy.Strategy(7)), "strategy"},
	} {
		_, err := New(bg, rdb, tc.opt)
		var ce *ConfigError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("got %v, want a ConfigError on %s", err, tc.field)
		}
	}
	if _, err := New(bg, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil client: %v", err)
	}
	c := newCache(t)
	var ce *ConfigError
	if err := c.Set(bg, "aci::controller", "x", 0); !errors.As(err, &ce) || ce.Field != "key" {
		t.Errorf("reserved key: %v", err)
	}
	if _, err := c.Get(bg, "bad\xff"); !errors.As(err, &ce) || ce.Field != "key" {
		t.Errorf("non-UTF-8 key: %v", err)
	}
	if err := c.Flush(bg); !errors.As(err, &ce) || ce.Field != "namespace" {
		t.Errorf("Flush without a namespace: %v", err)
	}
}

func TestGetSetDeleteAndL1(t *testing.T) {
	space := ns(t)
	c := newCache(t, WithNamespace(space), WithFixedStrategy(policy.StrategyTTL))
	rdb := newClient(t)
	if _, err := c.Get(bg, "missing"); !errors.Is(err, redis.Nil) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	if err := c.Set(bg, "user:1", "alice", time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(bg, space+"").Result(); err == nil {
		t.Fatalf("unexpected key %q", v)
	}
	if v := rdb.Get(bg, "aci:"+space+":user:1").Val(); v != "alice" {
		t.Fatalf("Redis has %q under the namespaced key", v)
	}
	if ttl := rdb.PTTL(bg, "aci:"+space+":user:1").Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("PTTL %v", ttl)
	}
	before := c.Stats()
	for range 10 {
		if v, err := c.Get(bg, "user:1"); err != nil || v != "alice" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	if s := c.Stats(); s.L1Hits-before.L1Hits != 10 || s.L1Misses != before.L1Misses {
		t.Fatalf("read-your-writes from L1: %+v", s)
	}
	// The L1 copy never outlives the Redis TTL read with the value.
	if err := rdb.Set(bg, "aci:"+space+":short", "v", 150*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get(bg, "short"); v != "v" {
		t.Fatal("short not read")
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := c.Get(bg, "short"); !errors.Is(err, redis.Nil) {
		t.Fatalf("served past the Redis TTL: %v", err)
	}
	existed, err := c.Delete(bg, "user:1")
	if err != nil || !existed {
		t.Fatalf("Delete = %v, %v", existed, err)
	}
	if _, err := c.Get(bg, "user:1"); !errors.Is(err, redis.Nil) {
		t.Fatalf("after Delete: %v", err)
	}
	// Flush deletes only this namespace's keys.
	_ = rdb.Set(bg, "other:key", "keep", time.Minute)
	_ = c.Set(bg, "a", "1", time.Minute)
	_ = c.Set(bg, "b", "2", time.Minute)
	if err := c.Flush(bg); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(bg, "aci:"+space+":a", "aci:"+space+":b").Val(); n != 0 {
		t.Fatalf("%d namespace keys left after Flush", n)
	}
	if rdb.Get(bg, "other:key").Val() != "keep" {
		t.Fatal("Flush deleted a key outside the namespace")
	}
	if _, err := c.Get(bg, "a"); !errors.Is(err, redis.Nil) {
		t.Fatalf("L1 served after Flush: %v", err)
	}
	if err := c.Close(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(bg, "a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

// TestTwoEagerInstancesLoseNothing: B caches every key, A overwrites them; under eager every
// write reaches B before long, so B never serves an old value once it has seen the message,
// and at the end serves every latest value, with no loss detected.
func TestTwoEagerInstancesLoseNothing(t *testing.T) {
	space := ns(t)
	a := newCache(t, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
	b := newCache(t, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleFollower))
	if a.Strategy() != policy.StrategyEager || b.Strategy() != policy.StrategyEager {
		t.Fatalf("strategies %v %v", a.Strategy(), b.Strategy())
	}
	const keys, rounds = 20, 25
	for r := 0; r < rounds; r++ {
		for k := 0; k < keys; k++ {
			if err := a.Set(bg, "k"+strconv.Itoa(k), strconv.Itoa(r), time.Minute); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Get(bg, "k"+strconv.Itoa(k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := strconv.Itoa(rounds - 1)
	eventually(t, 2*time.Second, "B serves every latest value", func() bool {
		for k := 0; k < keys; k++ {
			if v, err := b.Get(bg, "k"+strconv.Itoa(k)); err != nil || v != want {
				return false
			}
		}
		return true
	})
	// Every one of A's invalidations reaches B (they may still be in flight when B already
	// reads the latest values from Redis).
	eventually(t, 3*time.Second, "B applied every invalidation", func() bool {
		return b.Stats().InvalidationsApplied >= keys*rounds
	})
	sa, sb := a.Stats(), b.Stats()
	if sb.Gaps != 0 || sb.Malformed != 0 || sb.InvalidationsApplied < keys*rounds {
		t.Fatalf("B: gaps %d malformed %d applied %d (want >= %d)", sb.Gaps, sb.Malformed, sb.InvalidationsApplied, keys*rounds)
	}
	if sa.MessagesSent < keys*rounds || sb.L1Hits == 0 || !sa.IsController || sb.IsController {
		t.Fatalf("A %+v\nB %+v", sa, sb)
	}
}

// TestLossIsDetected publishes, as a foreign sender, seqs 1 and 3: B must flush (gaps 1) and
// stop serving what it cached.
func TestLossIsDetected(t *testing.T) {
	space := ns(t)
	c := newCache(t, WithNamespace(space), WithRole(RoleFollower))
	rdb := newClient(t)
	_ = rdb.Set(bg, "aci:"+space+":k", "v", time.Minute)
	foreign := sender{source: "foreign1", epoch: "e1"}
	ch := "aci:" + space + ":invalidation"
	rdb.Publish(bg, ch, foreign.invalidate([]string{"aci:" + space + ":x"}, policy.StrategyEager, 1))
	eventually(t, time.Second, "first message received", func() bool { return c.Stats().MessagesReceived >= 1 })
	if v, _ := c.Get(bg, "k"); v != "v" {
		t.Fatal("k not read")
	}
	hits := c.Stats().L1Hits
	if v, _ := c.Get(bg, "k"); v != "v" || c.Stats().L1Hits != hits+1 {
		t.Fatal("k not cached")
	}
	rdb.Publish(bg, ch, foreign.invalidate([]string{"aci:" + space + ":y"}, policy.StrategyEager, 3))
	eventually(t, 2*time.Second, "the hole declared", func() bool { return c.Stats().Gaps == 1 })
	misses := c.Stats().L1Misses
	if v, _ := c.Get(bg, "k"); v != "v" || c.Stats().L1Misses != misses+1 {
		t.Fatal("L1 not flushed after a loss")
	}
	rdb.Publish(bg, ch, "{not json")
	eventually(t, time.Second, "malformed counted", func() bool { return c.Stats().Malformed == 1 })
}

func TestElectionAndStrategyUpdates(t *testing.T) {
	space := ns(t)
	tick := WithTick(50 * time.Millisecond)
	a := newCache(t, WithNamespace(space), tick)
	b := newCache(t, WithNamespace(space), tick)
	if a.Stats().IsController == b.Stats().IsController {
		t.Fatalf("controllers: %v %v", a.Stats().IsController, b.Stats().IsController)
	}
	ctrl, fol := a, b
	if b.Stats().IsController {
		ctrl, fol = b, a
	}
	// The follower hears the controller's strategy (adaptive starts ttl) instead of eager.
	eventually(t, 3*time.Second, "follower adopts the controller's strategy", func() bool {
		return fol.Strategy() == ctrl.Strategy() && fol.Stats().MessagesReceived > 0
	})
	// Writes on the follower reach the controller as reports.
	for i := range 20 {
		_ = fol.Set(bg, "w"+strconv.Itoa(i), "x", time.Minute)
	}
	eventually(t, 3*time.Second, "controller counts the follower's writes", func() bool {
		return ctrl.Stats().WriteRate > 0
	})
	// The controller leaves: the follower takes the lease within a lease period.
	if err := ctrl.Close(bg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 4*time.Second, "the follower takes over", func() bool { return fol.Stats().IsController })
}

func TestHostilePolicyFallsBackToEager(t *testing.T) {
	path := filepath.Join(policyDir(t), "hostile.wasm")
	space := ns(t)
	var switched atomic.Int32
	c := newCache(t, WithNamespace(space), WithPolicyFile(path), WithRole(RoleController), WithPolicyCallTimeout(20*time.Millisecond))
	c.OnSwitch(func(from, to Strategy) {
		if to == policy.StrategyEager {
			switched.Add(1)
		}
	})
	other := newCache(t, WithNamespace(space), WithRole(RoleFollower))
	start := time.Now()
	if err := c.Set(bg, "hostile:loop", "x", time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the looping policy held Set for %v", d)
	}
	if c.Strategy() != policy.StrategyEager || c.Stats().PolicyFaults != 1 {
		t.Fatalf("after a looping call: strategy %v faults %d", c.Strategy(), c.Stats().PolicyFaults)
	}
	// Eager for the window: the next write is announced at once.
	applied := other.Stats().InvalidationsApplied
	if err := c.Set(bg, "plain", "y", time.Minute); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "the eager write reached the other instance", func() bool {
		return other.Stats().InvalidationsApplied > applied
	})
	if err := c.Set(bg, "hostile:trap", "x", time.Minute); err != nil {
		t.Fatal(err)
	}
	if c.Strategy() != policy.StrategyEager || switched.Load() == 0 {
		t.Fatalf("strategy %v, switches to eager %d", c.Strategy(), switched.Load())
	}
}

// TestConcurrentHistory: many goroutines on one cache. Each key has one writer writing
// increasing versions; readers check that no read returns a version older than the one whose
// Set had returned before the read began (read-your-writes across goroutines, no stale fill).
func TestConcurrentHistory(t *testing.T) {
	space := ns(t)
	c := newCache(t, WithNamespace(space), WithL1Size(64, 1<<20))
	rdb := newClient(t)
	const keys, versions, readers = 8, 200, 8
	var done [keys]atomic.Int64
	for k := range keys {
		done[k].Store(-1)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := range versions {
				if err := c.Set(bg, "h"+strconv.Itoa(k), strconv.Itoa(v), time.Minute); err != nil {
					errs <- err
					return
				}
				done[k].Store(int64(v))
				if v%50 == 0 {
					_ = c.FlushL1(bg)
				}
			}
		}()
	}
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := rand.IntN(keys)
				lo := done[k].Load()
				v, err := c.Get(bg, "h"+strconv.Itoa(k))
				if errors.Is(err, redis.Nil) {
					if lo >= 0 {
						errs <- fmt.Errorf("key %d: nil after version %d was written", k, lo)
						return
					}
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				if n, _ := strconv.Atoi(v); int64(n) < lo {
					errs <- fmt.Errorf("key %d: read version %d after version %d was written", k, n, lo)
					return
				}
			}
		}()
	}
	// Another client's eager-announced writes race the readers' fills too.
	other := newCache(t, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleFollower))
	for i := range 100 {
		_ = other.Set(bg, "x"+strconv.Itoa(i%4), strconv.Itoa(i), time.Minute)
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := c.Stats(); s.L1Hits == 0 || s.L1Entries > 64+keys {
		t.Errorf("stats %+v", s)
	}
	_ = rdb
}
