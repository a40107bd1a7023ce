package acicache

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// writeHold holds, while armed, every pipeline of the writer's client that writes key (SET or
// DEL): the eager write and its PUBLISH as the host sees them when the key's node is slow, a
// redirect is followed, or the pool's connection sends after another one. With abandon, the
// pipeline never reaches Redis: it ends with the caller's context, unanswered (the commands'
// own Err stay nil, as when a hook gives up).
type writeHold struct {
	key     string
	delay   time.Duration
	abandon bool
	armed   atomic.Bool
	held    atomic.Int32
}

func (h *writeHold) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *writeHold) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *writeHold) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.armed.Load() && h.writes(cmds) {
			h.held.Add(1)
			if h.abandon {
				<-ctx.Done()
				return ctx.Err()
			}
			time.Sleep(h.delay)
		}
		return next(ctx, cmds)
	}
}

func (h *writeHold) writes(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if a := c.Args(); (c.Name() == "set" || c.Name() == "del") && len(a) > 1 && a[1] == h.key {
			return true
		}
	}
	return false
}

// heldWriter is an eager controller on a client whose writes of key hold hooks.
func heldWriter(t *testing.T, space string, hold *writeHold) *Cache {
	t.Helper()
	rdb := newClient(t)
	rdb.AddHook(hold)
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	c, err := New(ctx, rdb, WithLogger(testLogger), WithNamespace(space),
		WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(bg) })
	return c
}

// TestSlowEagerWriteIsNoLoss: while an eager write's pipeline is held (900 ms, well over the
// reorder allowance of 250 ms), the writer's ticks go on. A mark or strategy_update naming the
// write's seq would reach the receiver before the invalidation, and the receiver would flush
// for a loss that is not one. Positions name only answered seqs (docs/WIRE.md 4).
func TestSlowEagerWriteIsNoLoss(t *testing.T) {
	space := ns(t)
	hold := &writeHold{key: "aci:" + space + ":k", delay: 900 * time.Millisecond}
	a := heldWriter(t, space, hold)
	b := newCache(t, WithNamespace(space), WithRole(RoleFollower))
	if err := a.Set(bg, "k", "v0", time.Minute); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "B applies the first invalidation", func() bool { return b.Stats().InvalidationsApplied >= 1 })
	if v, err := b.Get(bg, "k"); err != nil || v != "v0" {
		t.Fatalf("B reads %q, %v", v, err)
	}
	// Let the writer's mark for v0 go out: from here on it has nothing unannounced.
	time.Sleep(600 * time.Millisecond)
	before := b.Stats()
	hold.armed.Store(true)
	t0 := time.Now()
	err := a.Set(bg, "k", "v1", time.Minute)
	took := time.Since(t0)
	hold.armed.Store(false)
	if err != nil {
		t.Fatal(err)
	}
	if hold.held.Load() != 1 || took < 600*time.Millisecond {
		t.Fatalf("the write was not held (%d, %v): the scenario tested nothing", hold.held.Load(), took)
	}
	// Ticks of both sides, and the receiver's reorder allowance, several times over.
	eventually(t, 2*time.Second, "B applies the held write's invalidation", func() bool {
		return b.Stats().InvalidationsApplied > before.InvalidationsApplied
	})
	time.Sleep(500 * time.Millisecond)
	after := b.Stats()
	if after.Gaps != before.Gaps || after.Flushes != before.Flushes {
		t.Fatalf("a write held %v was taken for a loss: gaps %d -> %d, flushes %d -> %d",
			took, before.Gaps, after.Gaps, before.Flushes, after.Flushes)
	}
	if v, err := b.Get(bg, "k"); err != nil || v != "v1" {
		t.Fatalf("B reads %q, %v after the write", v, err)
	}
}

// TestAbandonedEagerWriteFlushesFirst: an eager write whose caller gives up before Redis
// answered (its context ends; the pipeline's PUBLISH has no error of its own) cannot tell what
// receivers got: the writer's next message on P:invalidation after it is a flush
// (docs/WIRE.md 4).
func TestAbandonedEagerWriteFlushesFirst(t *testing.T) {
	space := ns(t)
	hold := &writeHold{key: "aci:" + space + ":k", abandon: true}
	a := heldWriter(t, space, hold)
	ps := newClient(t).Subscribe(bg, "aci:"+space+":invalidation")
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	msgs := ps.Channel()
	if err := a.Set(bg, "k", "v0", time.Minute); err != nil {
		t.Fatal(err)
	}
	hold.armed.Store(true)
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	err := a.Set(ctx, "k", "v1", time.Minute)
	cancel()
	hold.armed.Store(false)
	if !errors.Is(err, context.DeadlineExceeded) || hold.held.Load() != 1 {
		t.Fatalf("the write was not abandoned (%d): %v", hold.held.Load(), err)
	}
	if err := a.Set(bg, "k2", "x", time.Minute); err != nil {
		t.Fatal(err)
	}
	// a's messages: the invalidation of v0 (seq 1), maybe a mark, then (seq 2 never went out)
	// the flush, before the invalidation of k2.
	var got []string
	timeout := time.After(3 * time.Second)
	for {
		var p *redis.Message
		select {
		case p = <-msgs:
		case <-timeout:
			t.Fatalf("no flush, then k2's invalidation, from the writer: %v", got)
		}
		m, bad := decode([]byte(p.Payload))
		if bad != "" || m.source != a.InstanceID() || m.action == actMark || m.seq <= 1 {
			continue
		}
		got = append(got, p.Payload)
		if len(got) == 1 && m.action != actFlush {
			t.Fatalf("the message after an abandoned write is not a flush: %s", p.Payload)
		}
		if m.action == actInvalidate && len(m.keys) == 1 && m.keys[0] == "aci:"+space+":k2" {
			break
		}
	}
	if st := a.Stats(); st.PublishFailures == 0 {
		t.Fatalf("the abandoned publish is not counted as failed: %+v", st)
	}
}

// TestPositionConcurrentPublishes: writers take seqs and answer them out of order; a position
// never names a seq whose publish, or an earlier one's, is still unanswered, and never moves
// back. With nothing in flight it is the last seq.
func TestPositionConcurrentPublishes(t *testing.T) {
	c := &Cache{}
	s1 := c.nextSeq()
	s2 := c.nextSeq()
	c.published(nil) // s2's answer, s1 still in flight
	if p := c.position(); p != 0 {
		t.Fatalf("position %d with seq %d in flight", p, s1)
	}
	c.published(nil)
	if p := c.position(); p != s2 {
		t.Fatalf("position %d with nothing in flight, want %d", p, s2)
	}

	const writers, each = 4, 3000
	answered := make([]atomic.Bool, s2+writers*each+1)
	answered[s1].Store(true)
	answered[s2].Store(true)
	done := make(chan struct{})
	var readerErr error
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		var last uint64
		for {
			select {
			case <-done:
				return
			default:
			}
			p := c.position()
			if p < last {
				readerErr = errors.New("position moved back")
				return
			}
			for s := last + 1; s <= p; s++ {
				if !answered[s].Load() {
					readerErr = errors.New("position names a seq still in flight")
					return
				}
			}
			last = p
		}
	}()
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				seq := c.nextSeq()
				if i%7 == 0 {
					runtime.Gosched()
				}
				answered[seq].Store(true)
				c.published(nil)
			}
		}()
	}
	wg.Wait()
	close(done)
	rwg.Wait()
	if readerErr != nil {
		t.Fatal(readerErr)
	}
	if p, want := c.position(), s2+writers*each; p != want {
		t.Fatalf("position %d at rest, want %d", p, want)
	}
}
