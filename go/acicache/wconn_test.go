package acicache

import (
	"context"
	"errors"
	"math"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// The eager write path on connections of our own (wconn.go) and the eager writes counted at the
// tick (cache.go Set, fleet.go tick). Every test runs against the real redis-server.

// countHook counts the pipelines that write key.
type countHook struct {
	key       string
	pipelines atomic.Int32
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if a := c.Args(); c.Name() == "set" && len(a) > 1 && a[1] == h.key {
				h.pipelines.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// TestOwnWriterPathByClient: a standalone client's eager SET and DEL go over the own
// connection (the other instance hears them, DEL reports existence, DB is selected); once a
// hook is added they go through go-redis, where the hook sees them; other clients never get
// an own writer.
func TestOwnWriterPathByClient(t *testing.T) {
	space := ns(t)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, DB: 3})
	t.Cleanup(func() { _ = rdb.Close() })
	a := newCacheOn(t, rdb, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
	b := newCache(t, WithNamespace(space), WithRole(RoleFollower))
	if a.own == nil {
		t.Fatal("no own writer for a standalone client")
	}
	if err := a.Set(bg, "k", "v1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(bg, "aci:"+space+":k").Result(); err != nil || v != "v1" {
		t.Fatalf("DB 3 holds %q, %v", v, err)
	}
	if n, _ := newClient(t).Exists(bg, "aci:"+space+":k").Result(); n != 0 {
		t.Fatal("the own connection wrote to DB 0")
	}
	if pttl := rdb.PTTL(bg, "aci:"+space+":k").Val(); pttl <= 50*time.Second || pttl > time.Minute {
		t.Fatalf("PTTL %v", pttl)
	}
	existed, err := a.Delete(bg, "k")
	if err != nil || !existed {
		t.Fatalf("Delete: %v %v", existed, err)
	}
	if existed, err = a.Delete(bg, "k"); err != nil || existed {
		t.Fatalf("second Delete: %v %v", existed, err)
	}
	if got := a.own.writes.Load(); got != 3 {
		t.Fatalf("%d writes on the own connection, want 3", got)
	}
	eventually(t, 2*time.Second, "B hears the three", func() bool { return b.Stats().InvalidationsApplied >= 3 })

	h := &countHook{key: "aci:" + space + ":k"}
	rdb.AddHook(h)
	if err := a.Set(bg, "k", "v2", time.Minute); err != nil {
		t.Fatal(err)
	}
	if a.own.writes.Load() != 3 || h.pipelines.Load() != 1 {
		t.Fatalf("after AddHook: own writes %d, pipelines the hook saw %d", a.own.writes.Load(), h.pipelines.Load())
	}
	eventually(t, 2*time.Second, "B hears the hooked write", func() bool { return b.Stats().InvalidationsApplied >= 4 })
	if st := b.Stats(); st.Gaps != 0 {
		t.Fatalf("B: %+v", st)
	}

	for name, cl := range map[string]redis.UniversalClient{
		"ring":      redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": redisAddr}}),
		"cluster":   redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{redisAddr}}),
		"OnConnect": redis.NewClient(&redis.Options{Addr: redisAddr, OnConnect: func(context.Context, *redis.Conn) error { return nil }}),
		"limiter":   redis.NewClient(&redis.Options{Addr: redisAddr, Limiter: nopLimiter{}}),
	} {
		if newOwnWriter(cl) != nil {
			t.Errorf("%s: an own writer", name)
		}
		_ = cl.Close()
	}
}

type nopLimiter struct{}

func (nopLimiter) Allow() error       { return nil }
func (nopLimiter) ReportResult(error) {}

// pause holds every write command of the server for d (CLIENT PAUSE WRITE): an eager write
// then waits for its answer as on a slow server.
func pause(t *testing.T, d time.Duration) {
	t.Helper()
	if err := newClient(t).Do(bg, "CLIENT", "PAUSE", d.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = newClient(t).Do(bg, "CLIENT", "UNPAUSE").Err() })
}

// TestOwnWriterGivesUp: a write held by the server ends at the caller's deadline, at its
// cancellation, or at the client's ReadTimeout, without waiting for the server; the
// connection is closed, never reused (the next write dials), and the next message on the
// invalidation channel is a flush (docs/WIRE.md 4).
func TestOwnWriterGivesUp(t *testing.T) {
	for _, tc := range []struct {
		name        string
		readTimeout time.Duration
		ctx         func() (context.Context, context.CancelFunc)
		want        error
	}{
		{"deadline", 0, func() (context.Context, context.CancelFunc) { return context.WithTimeout(bg, 150*time.Millisecond) }, context.DeadlineExceeded},
		{"cancel", 0, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(bg)
			time.AfterFunc(150*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"read timeout", 150 * time.Millisecond, func() (context.Context, context.CancelFunc) { return bg, func() {} }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			space := ns(t)
			rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ReadTimeout: tc.readTimeout})
			t.Cleanup(func() { _ = rdb.Close() })
			a := newCacheOn(t, rdb, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
			ps := newClient(t).Subscribe(bg, "aci:"+space+":invalidation")
			t.Cleanup(func() { _ = ps.Close() })
			if _, err := ps.Receive(bg); err != nil {
				t.Fatal(err)
			}
			msgs := ps.Channel()
			if err := a.Set(bg, "k", "v0", time.Minute); err != nil {
				t.Fatal(err)
			}
			pause(t, 2*time.Second)
			ctx, cancel := tc.ctx()
			t0 := time.Now()
			err := a.Set(ctx, "k", "v1", time.Minute)
			took := time.Since(t0)
			cancel()
			var ne net.Error
			if tc.want != nil && !errors.Is(err, tc.want) || tc.want == nil && !(errors.As(err, &ne) && ne.Timeout()) {
				t.Fatalf("held write: %v", err)
			}
			if took > time.Second {
				t.Fatalf("the held write returned after %v", took)
			}
			if err := newClient(t).Do(bg, "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Fatal(err)
			}
			if err := a.Set(bg, "k2", "x", time.Minute); err != nil {
				t.Fatal(err)
			}
			if d := a.own.dials.Load(); d != 2 {
				t.Fatalf("%d dials: the connection of the abandoned write was reused", d)
			}
			// a's messages: seq 1 (v0), maybe a mark, the flush, then k2's invalidation.
			timeout := time.After(3 * time.Second)
			for first := true; ; {
				var p *redis.Message
				select {
				case p = <-msgs:
				case <-timeout:
					t.Fatal("no flush, then k2's invalidation")
				}
				m, bad := decode([]byte(p.Payload))
				if bad != "" || m.action == actMark || m.seq <= 1 {
					continue
				}
				if first && m.action != actFlush {
					t.Fatalf("the message after an abandoned write is not a flush: %s", p.Payload)
				}
				first = false
				if m.action == actInvalidate && m.keys[0] == "aci:"+space+":k2" {
					break
				}
			}
			if v, err := rdb.Get(bg, "aci:"+space+":k2").Result(); err != nil || v != "x" {
				t.Fatalf("k2 = %q, %v", v, err)
			}
		})
	}
}

// TestOwnWriterRetriesClosedIdleConnection: the server closes the idle connection (a restart,
// its idle timeout); the next write is sent again on a fresh one and succeeds.
func TestOwnWriterRetriesClosedIdleConnection(t *testing.T) {
	space := ns(t)
	a := newCache(t, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
	if err := a.Set(bg, "k", "v0", time.Minute); err != nil {
		t.Fatal(err)
	}
	a.own.mu.Lock()
	if len(a.own.idle) != 1 {
		t.Fatalf("%d idle connections", len(a.own.idle))
	}
	laddr := a.own.idle[0].nc.LocalAddr().String()
	a.own.mu.Unlock()
	if err := newClient(t).ClientKillByFilter(bg, "ADDR", laddr).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := a.Set(bg, "k", "v1", time.Minute); err != nil {
		t.Fatalf("the write after the server closed the idle connection: %v", err)
	}
	if d, w := a.own.dials.Load(), a.own.writes.Load(); d != 2 || w != 2 {
		t.Fatalf("dials %d writes %d", d, w)
	}
	if st := a.Stats(); st.PublishFailures != 0 {
		t.Fatalf("%+v", st)
	}
}

// TestEagerWritesCountedAtTheTick: under eager, writes reach the policy once per tick (a count):
// the measured rate follows them, the policy stays eager while they go on (with the counts
// lost, the adaptive policy would leave eager one hold after its newest quarter of the window
// went quiet), and leaves eager after they stop.
func TestEagerWritesCountedAtTheTick(t *testing.T) {
	wasm, err := BundledPolicy("adaptive")
	if err != nil {
		t.Fatal(err)
	}
	c := newCache(t, WithNamespace(ns(t)), WithRole(RoleController), WithTick(50*time.Millisecond))
	// window 1 s (newest quarter 250 ms), hold 300 ms; eager above 50 writes/s.
	if err := c.SwapPolicy(bg, wasm, `{"window-ms":1000,"hold-ms":300}`); err != nil {
		t.Fatal(err)
	}
	var downs atomic.Int32
	c.OnSwitch(func(from, to Strategy) {
		if from == policy.StrategyEager {
			downs.Add(1)
		}
	})
	// ~200 writes/s: up to eager by a write (the one that crossed the threshold), then 1.5 s
	// of writes under eager.
	var eagerSince time.Time
	for i := 0; eagerSince.IsZero() || time.Since(eagerSince) < 1500*time.Millisecond; i++ {
		if err := c.Set(bg, "k", "v", time.Minute); err != nil {
			t.Fatal(err)
		}
		if eagerSince.IsZero() && c.Strategy() == policy.StrategyEager {
			eagerSince = time.Now()
		}
		if i > 2000 {
			t.Fatalf("never eager: %v, rate %v", c.Strategy(), c.Stats().WriteRate)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c.eagerWrites.Load() > 50 {
		t.Fatalf("%d eager writes not counted", c.eagerWrites.Load())
	}
	if d := downs.Load(); d != 0 || c.Strategy() != policy.StrategyEager {
		t.Fatalf("left eager %d times while writing (strategy %v)", d, c.Strategy())
	}
	if r := c.Stats().WriteRate; r < 50 || math.IsNaN(r) {
		t.Fatalf("rate %v under eager writes", r)
	}
	eventually(t, 3*time.Second, "eager ends once the writes stop", func() bool { return c.Strategy() != policy.StrategyEager })
}
