package acicache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// startCluster starts a Redis Cluster of three masters on loopback (no replicas), each node a
// server of its own for the test's lifetime, slots split evenly, and waits until every node
// reports cluster_state:ok.
func startCluster(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = startServer(t, "--cluster-enabled", "yes", "--dir", dir,
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", i), "--cluster-node-timeout", "2000")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	per := 16384 / len(addrs)
	for i, a := range addrs {
		n := redis.NewClient(&redis.Options{Addr: a})
		first, last := i*per, (i+1)*per-1
		if i == len(addrs)-1 {
			last = 16383
		}
		if err := n.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", first, last).Err(); err != nil {
			t.Fatal(err)
		}
		host, port, _ := strings.Cut(addrs[0], ":")
		if i > 0 {
			if err := n.Do(ctx, "CLUSTER", "MEET", host, port).Err(); err != nil {
				t.Fatal(err)
			}
		}
		_ = n.Close()
	}
	for _, a := range addrs {
		n := redis.NewClient(&redis.Options{Addr: a})
		for {
			info, _ := n.ClusterInfo(ctx).Result()
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("cluster on %v never came up: %s", addrs, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = n.Close()
	}
	return addrs
}

// TestClusterEagerPublishFollowsItsWrite: on a cluster client go-redis sends each node's part of
// a pipeline concurrently, so a SET and its PUBLISH pipelined together could reach the channel
// before the key's master applied the SET. A reader that re-reads the key on that invalidation
// would then cache the old value until its local TTL. Here the key's master holds writes for
// 400 ms (CLIENT PAUSE WRITE) while a follower keeps reading the key: the follower must see the
// new value right after the write returns. Keyless PUBLISH goes to a random node, and the race
// shows only when that is not the paused one (2 in 3), so several keys are tried.
func TestClusterEagerPublishFollowsItsWrite(t *testing.T) {
	addrs := startCluster(t)
	newCluster := func() *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ctx := context.Background()
	long := WithLocalTTL(time.Minute)
	w := newCacheOn(t, newCluster(), WithNamespace("ce"), WithFixedStrategy(policy.StrategyEager), WithRole(RoleController), long)
	r := newCacheOn(t, newCluster(), WithNamespace("ce"), WithRole(RoleFollower), long)
	admin := newCluster()
	for i := 0; i < 6; i++ {
		key := fmt.Sprintf("k%d", i)
		if err := w.Set(ctx, key, "old", 0); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Second, "the follower reads the old value", func() bool {
			v, err := r.Get(ctx, key)
			return err == nil && v == "old"
		})
		master, err := admin.MasterForKey(ctx, "aci:ce:"+key)
		if err != nil {
			t.Fatal(err)
		}
		if err := master.Do(ctx, "CLIENT", "PAUSE", 400, "WRITE").Err(); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // a reader that refills the key as soon as it is invalidated
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = r.Get(ctx, key)
				time.Sleep(time.Millisecond)
			}
		}()
		if err := w.Set(ctx, key, "new", 0); err != nil {
			t.Fatal(err)
		}
		close(stop)
		<-done
		time.Sleep(100 * time.Millisecond) // the invalidation's delivery, with room
		if v, err := r.Get(ctx, key); err != nil || v != "new" {
			t.Fatalf("%s: the follower serves %q (err %v) after the write returned: its invalidation overtook the SET", key, v, err)
		}
	}
}
