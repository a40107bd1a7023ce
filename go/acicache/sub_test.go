package acicache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// The subscriber (sub.go): our own lean connection for a standalone *redis.Client, go-redis's
// PubSub for every other client. Every test here runs against a real redis-server.

// subOf is the cache's current subscriber (nil while resubscribing).
func subOf(c *Cache) subscriber {
	c.psMu.Lock()
	defer c.psMu.Unlock()
	return c.ps
}

func leanOf(t *testing.T, c *Cache) *leanSub {
	t.Helper()
	var s *leanSub
	eventually(t, 3*time.Second, "subscribed", func() bool {
		ls, ok := subOf(c).(*leanSub)
		s = ls
		return ok
	})
	return s
}

// newRing is a one-shard ring over the test server: a UniversalClient that is not a
// *redis.Client, so the cache subscribes through go-redis.
func newRing(t testing.TB) redis.UniversalClient {
	r := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": redisAddr}})
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func newCacheOn(t testing.TB, rdb redis.UniversalClient, opts ...Option) *Cache {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, rdb, append([]Option{WithLogger(testLogger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// clients are the two paths: our own subscriber, and go-redis's (through a ring).
var clients = []struct {
	name string
	new  func(testing.TB) redis.UniversalClient
	lean bool
}{
	{"lean", func(t testing.TB) redis.UniversalClient { return newClient(t) }, true},
	{"go-redis", newRing, false},
}

func TestSubscriberPathByClient(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			c := newCacheOn(t, cl.new(t), WithNamespace(ns(t)))
			_, lean := subOf(c).(*leanSub)
			_, goRedis := subOf(c).(*goRedisSub)
			if lean != cl.lean || goRedis == cl.lean {
				t.Fatalf("subscriber %T", subOf(c))
			}
		})
	}
	// Only a standalone client without OnConnect or streaming credentials gets the lean one.
	opt := func(rdb redis.UniversalClient) bool {
		defer rdb.Close()
		_, ok := leanOptions(rdb)
		return ok
	}
	if !opt(redis.NewClient(&redis.Options{Addr: redisAddr})) {
		t.Error("a *redis.Client is not subscribed by the lean subscriber")
	}
	if !opt(redis.NewClient(&redis.Options{Network: "unix", Addr: "/nonexistent.sock", Password: "x"})) {
		t.Error("a unix-socket client with a password is not subscribed by the lean subscriber")
	}
	for name, rdb := range map[string]redis.UniversalClient{
		"cluster":  redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{redisAddr}}),
		"ring":     redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": redisAddr}}),
		"failover": redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}}),
		"universal failover": redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs: []string{"127.0.0.1:1"}, MasterName: "m"}),
		"OnConnect": redis.NewClient(&redis.Options{Addr: redisAddr,
			OnConnect: func(context.Context, *redis.Conn) error { return nil }}),
	} {
		if opt(rdb) {
			t.Errorf("%s: the lean subscriber would be used", name)
		}
	}
}

// TestOwnMessagesReadInBatches: while one instance writes under eager, its own messages come
// back to it; the lean subscriber pauses after them, so it goes to the socket far less often
// than once per write, and loses none of them.
func TestOwnMessagesReadInBatches(t *testing.T) {
	c := newCache(t, WithNamespace(ns(t)), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
	s := leanOf(t, c)
	const writes = 400
	wake0, recv0 := s.wakeups(), c.Stats().PubsubReceived
	start := time.Now()
	for i := range writes {
		if err := c.Set(bg, "k"+strconv.Itoa(i%10), "v", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 2*time.Second, "every own message read", func() bool {
		return c.Stats().PubsubReceived-recv0 >= writes
	})
	wakeups, elapsed := s.wakeups()-wake0, time.Since(start)
	t.Logf("%d writes in %v, %d reads from the socket", writes, elapsed, wakeups)
	// At most about one read per pause; on a machine so loaded that a write takes more than a
	// pause, there are as many pauses as writes, hence the second bound.
	if paused := float64(elapsed) / float64(ownBatchDelay); wakeups*20 > writes && float64(wakeups) > 1.2*paused+5 {
		t.Fatalf("%d reads from the socket for %d own messages in %v: not batched", wakeups, writes, elapsed)
	}
	if st := c.Stats(); st.Resubscribes != 0 || st.LagSuspensions != 0 || !st.L1Serving {
		t.Fatalf("stats %+v", st)
	}
}

// TestOwnMessageHandledWithoutAllocation: an own message (one per eager write) costs handle no
// allocation, and neither does the lean subscriber's parsing of a message.
func TestOwnMessageHandledWithoutAllocation(t *testing.T) {
	c := newCache(t, WithNamespace(ns(t)))
	own := c.snd.invalidate([]string{"aci:x:k"}, policy.StrategyEager, 1)
	ch := []byte(c.n.invalidation)
	if !c.handle(ch, own) {
		t.Fatal("own message not recognised")
	}
	if n := testing.AllocsPerRun(200, func() { c.handle(ch, own) }); n != 0 {
		t.Errorf("handle of an own message: %v allocations", n)
	}

	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	s, err := dialLean(ctx, newClient(t).Options(), 3*time.Second, []string{"alloc"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if ev, err := s.next(ctx); err != nil || ev.kind != evSubscribe {
		t.Fatalf("%+v %v", ev, err)
	}
	const n = 300
	pub := newClient(t)
	for i := range n {
		pub.Publish(bg, "alloc", own)
		_ = i
	}
	time.Sleep(100 * time.Millisecond) // the messages wait in the socket
	next := func() {
		ev, err := s.next(ctx)
		if err != nil || ev.kind != evMessage || string(ev.channel) != "alloc" || string(ev.payload) != string(own) {
			t.Fatalf("%+v %v", ev, err)
		}
	}
	next() // the reader's buffers are grown
	if a := testing.AllocsPerRun(n-10, next); a != 0 {
		t.Errorf("lean subscriber: %v allocations per message", a)
	}
}

// TestReportsSubscriptionToggles: the controller subscribes to the reports channel at runtime,
// a follower unsubscribes, on the same connection (no resubscription), on both paths.
func TestReportsSubscriptionToggles(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			space := ns(t)
			c := newCacheOn(t, cl.new(t), WithNamespace(space), WithRole(RoleController))
			rdb := newClient(t)
			numsub := func() int64 { return rdb.PubSubNumSub(bg, c.n.reports).Val()[c.n.reports] }
			foreign := sender{source: "foreign1", epoch: "e1"}
			report := func() uint64 {
				before := c.Stats().MessagesReceived
				rdb.Publish(bg, c.n.reports, foreign.writeReport(5, 0))
				// A foreign message on another channel after it: once that one is in, the
				// report was read too, if it was delivered at all.
				rdb.Publish(bg, c.n.invalidation, foreign.mark(0))
				eventually(t, 2*time.Second, "the mark received", func() bool { return c.Stats().MessagesReceived > before })
				time.Sleep(50 * time.Millisecond)
				return c.Stats().MessagesReceived - before
			}
			if numsub() != 1 || !c.Stats().IsController {
				t.Fatalf("controller: %d subscribers of the reports channel", numsub())
			}
			if got := report(); got != 2 {
				t.Fatalf("controller: %d of 2 messages received", got)
			}
			toggleReports(t, c, numsub, report)
			if st := c.Stats(); st.Resubscribes != 0 || !st.L1Serving {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestClientKillResubscribes: CLIENT KILL TYPE pubsub ends the subscription; the cache stops
// serving L1, resubscribes, and serves again from an empty L1.
func TestClientKillResubscribes(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			c := newCacheOn(t, cl.new(t), WithNamespace(ns(t)), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController))
			rdb := newClient(t)
			if err := c.Set(bg, "k", "v", time.Minute); err != nil {
				t.Fatal(err)
			}
			hits := c.Stats().L1Hits
			if v, _ := c.Get(bg, "k"); v != "v" || c.Stats().L1Hits != hits+1 {
				t.Fatal("k not served from L1")
			}
			first := subOf(c)
			flushes := c.Stats().Flushes
			n, err := rdb.ClientKillByFilter(bg, "TYPE", "pubsub").Result()
			if err != nil || n < 1 {
				t.Fatalf("CLIENT KILL: %d, %v", n, err)
			}
			eventually(t, 3*time.Second, "resubscribed", func() bool {
				s := subOf(c)
				return c.Stats().Resubscribes == 1 && s != nil && s != first && c.Stats().L1Serving
			})
			if st := c.Stats(); st.Flushes <= flushes {
				t.Fatalf("L1 not flushed: flushes %d -> %d", flushes, st.Flushes)
			}
			misses := c.Stats().L1Misses
			if v, _ := c.Get(bg, "k"); v != "v" || c.Stats().L1Misses != misses+1 {
				t.Fatal("L1 served an entry from before the resubscription")
			}
			// The new subscription works: another instance's write reaches it.
			other := newCache(t, WithNamespace(c.n.namespace), WithFixedStrategy(policy.StrategyEager), WithRole(RoleFollower))
			applied := c.Stats().InvalidationsApplied
			if err := other.Set(bg, "k", "w", time.Minute); err != nil {
				t.Fatal(err)
			}
			eventually(t, 2*time.Second, "the invalidation applied", func() bool { return c.Stats().InvalidationsApplied > applied })
			if v, _ := c.Get(bg, "k"); v != "w" {
				t.Fatalf("read %q after the other instance's write", v)
			}
		})
	}
}

// TestLeanSubscriberReadsLargeAndMalformedMessages: payloads larger than the read buffer are
// read whole, one over the 1 MiB cap is skipped unread and counted, and the subscription goes
// on (no resubscription).
func TestLeanSubscriberReadsLargeAndMalformedMessages(t *testing.T) {
	space := ns(t)
	c := newCache(t, WithNamespace(space), WithRole(RoleFollower))
	leanOf(t, c)
	rdb := newClient(t)
	foreign := sender{source: "foreign1", epoch: "e1"}
	keys := make([]string, 5000) // ~150 KB: more than the 64 KiB buffer
	for i := range keys {
		keys[i] = "aci:" + space + ":key" + strconv.Itoa(i) + strings.Repeat("x", 16)
	}
	rdb.Publish(bg, c.n.invalidation, foreign.invalidate(keys, policy.StrategyBatched, 1))
	eventually(t, 2*time.Second, "the large invalidation applied", func() bool {
		return c.Stats().InvalidationsApplied == uint64(len(keys))
	})
	rdb.Publish(bg, c.n.invalidation, strings.Repeat("y", maxPayload+1))
	rdb.Publish(bg, c.n.invalidation, "{not json")
	rdb.Publish(bg, c.n.invalidation, foreign.invalidate([]string{"aci:" + space + ":after"}, policy.StrategyEager, 2))
	eventually(t, 2*time.Second, "the message after them applied", func() bool {
		return c.Stats().InvalidationsApplied == uint64(len(keys))+1
	})
	if st := c.Stats(); st.Malformed != 2 || st.Resubscribes != 0 || st.Gaps != 0 {
		t.Fatalf("malformed %d resubscribes %d gaps %d", st.Malformed, st.Resubscribes, st.Gaps)
	}
}

// startServer starts a redis-server of its own with extra arguments (for the test's lifetime).
func startServer(t *testing.T, args ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(redisServerBinary(), append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no"}, args...)...)
	// The server's log says what a client cannot see (why a failover or a slot move did not
	// happen): kept, and its end shown when the test fails.
	logPath := filepath.Join(t.TempDir(), "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimRight(string(log), "\n"), "\n")
			t.Logf("server on port %d, the end of its log:\n%s", port, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeanSubscriberAuthenticates: on a server with requirepass and an ACL user, the lean
// subscriber authenticates as go-redis does (Password; Username+Password; a credentials
// provider), and a wrong password never counts as subscribed; it dials with the client's dialer
// (a unix socket, a custom Dialer).
func TestLeanSubscriberAuthenticates(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "r.sock")
	addr := startServer(t, "--requirepass", "s3cret", "--user", "alice", "on", ">pw", "~*", "&*", "+@all",
		"--unixsocket", sock, "--unixsocketperm", "700")
	type tagged struct{ net.Conn }
	dialer := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return tagged{c}, nil
	}
	for _, tc := range []struct {
		name string
		opt  redis.Options
	}{
		{"unix socket", redis.Options{Network: "unix", Addr: sock, Password: "s3cret"}},
		{"custom dialer", redis.Options{Dialer: dialer, Password: "s3cret"}},
		{"password", redis.Options{Password: "s3cret"}},
		{"acl user", redis.Options{Username: "alice", Password: "pw"}},
		{"credentials provider", redis.Options{CredentialsProvider: func() (string, string) { return "alice", "pw" }}},
		{"credentials provider context", redis.Options{CredentialsProviderContext: func(context.Context) (string, string, error) {
			return "default", "s3cret", nil
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			space := ns(t)
			open := func(role Role) *Cache {
				opt := tc.opt
				if opt.Addr == "" {
					opt.Addr = addr
				}
				rdb := redis.NewClient(&opt)
				t.Cleanup(func() { _ = rdb.Close() })
				c := newCacheOn(t, rdb, WithNamespace(space), WithFixedStrategy(policy.StrategyEager), WithRole(role))
				nc := leanOf(t, c).conn.Conn
				if _, ok := nc.(tagged); ok != (opt.Dialer != nil) {
					t.Fatalf("subscribed on a %T", nc)
				}
				if _, ok := nc.(*net.UnixConn); ok != (opt.Network == "unix") {
					t.Fatalf("subscribed on a %T", nc)
				}
				return c
			}
			a, b := open(RoleController), open(RoleFollower)
			_ = b.Set(bg, "k", "old", time.Minute)
			if v, _ := b.Get(bg, "k"); v != "old" {
				t.Fatal("k not read")
			}
			if err := a.Set(bg, "k", "new", time.Minute); err != nil {
				t.Fatal(err)
			}
			// A's eager write went over its own connection (wconn.go), dialled and
			// authenticated the same way.
			if a.own == nil || a.own.writes.Load() != 1 {
				t.Fatalf("the eager write did not go over the own connection: %+v", a.own)
			}
			a.own.mu.Lock()
			wc := a.own.idle[0].nc
			a.own.mu.Unlock()
			if _, ok := wc.(tagged); ok != (tc.opt.Dialer != nil) {
				t.Fatalf("wrote on a %T", wc)
			}
			eventually(t, 2*time.Second, "B serves A's write", func() bool {
				v, _ := b.Get(bg, "k")
				return v == "new"
			})
			if st := b.Stats(); st.InvalidationsApplied == 0 || st.Resubscribes != 0 {
				t.Fatalf("B: %+v", st)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: addr, Password: "wrong"})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(bg, 500*time.Millisecond)
		defer cancel()
		_, err := New(ctx, rdb, WithNamespace(ns(t)), quiet)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("New with a wrong password: %v", err)
		}
	})
}

// TestAppendMicros: the eager message's timestamp is the text float formatting gave.
func TestAppendMicros(t *testing.T) {
	check := func(us int64) {
		want := strconv.AppendFloat(nil, float64(us)/1e6, 'f', 6, 64)
		if got := appendMicros(nil, us); string(got) != string(want) {
			t.Fatalf("%d: %s, want %s", us, got, want)
		}
	}
	for _, us := range []int64{0, 1, 999999, 1000000, 1000001, 1764241234000000, 1764241234999999, 4e15} {
		check(us)
	}
	now := time.Now().UnixMicro()
	for i := range int64(200000) {
		check(now + i*7919)
		check(rand.Int64N(4e15))
	}
}

// toggleReports demotes and promotes c twice: as a follower it leaves the reports channel
// (report() then counts only the mark sent after the report), as the controller it listens
// again (both). numsub counts the channel's subscribers.
func toggleReports(t *testing.T, c *Cache, numsub func() int64, report func() uint64) {
	t.Helper()
	for round := range 2 {
		c.demote(bg, c.nowMs())
		eventually(t, 2*time.Second, "unsubscribed from reports", func() bool { return numsub() == 0 })
		if got := report(); got != 1 {
			t.Fatalf("round %d follower: %d messages received, want the mark only", round, got)
		}
		c.promote(bg, c.nowMs())
		eventually(t, 2*time.Second, "subscribed to reports", func() bool { return numsub() == 1 })
		if got := report(); got != 2 {
			t.Fatalf("round %d controller: %d of 2 messages received", round, got)
		}
	}
}
