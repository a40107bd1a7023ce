package acicache

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisAddr is a redis-server started for this test binary on a free loopback port: every
// integration test runs against a real server, never a mock.
var redisAddr string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(redisServerBinary(), "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "redis-server:", err)
		return 1
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	redisAddr = fmt.Sprintf("127.0.0.1:%d", port)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "redis-server did not answer")
			return 1
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m.Run()
}

// testLogger keeps warnings (a test that provokes one says so) and drops the info lines.
var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func newClient(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// newCache starts a cache in a namespace of its own (per test) unless opts set one.
func newCache(t testing.TB, opts ...Option) *Cache {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, newClient(t), append([]Option{WithLogger(testLogger)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func repoRoot(t testing.TB) string {
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
			t.Fatal("repository root not found")
		}
		dir = parent
	}
}

func policyDir(t testing.TB) string {
	if d := os.Getenv("ACI_POLICY_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "target", "policies")
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !holdsWithin(d, cond) {
		t.Fatalf("after %v: %s", d, what)
	}
}

// holdsWithin polls cond every 10 ms until it holds (true) or d has passed (false).
func holdsWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// redisServerBinary is the server the tests start: $ACI_REDIS_SERVER (scripts/test.sh's Valkey
// pass sets it to valkey-server), else redis-server from PATH.
func redisServerBinary() string {
	if b := os.Getenv("ACI_REDIS_SERVER"); b != "" {
		return b
	}
	return "redis-server"
}
