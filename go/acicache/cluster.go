package acicache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis Cluster (docs/WIRE.md section 10). On a *redis.ClusterClient:
//   - every channel of the namespace carries the hash tag {P} (names.go), so they share one slot;
//   - fleet messages go out with SPUBLISH and come in over one SSUBSCRIBE connection to the
//     shard of that slot (ClusterSharded, the default), or PUBLISH/SUBSCRIBE on the same names
//     (ClusterClassic);
//   - an eager write is answered before its invalidation leaves (writeThenPublish, 10.2);
//   - the subscription watches the topology (10.3): each tick the master of the channels' slot
//     is asked for CLUSTER SLOTS and the masters are compared with the map taken when the
//     subscription was opened; a node that serves slots and was not a master then, a dropped
//     connection to a master (watch connections, pinged each tick), or a server that ends the
//     sharded subscription ends it: L1 stops serving and is flushed, the cache resubscribes on a
//     fresh connection and flushes again (receive). Slots moving between existing masters
//     (resharding) are taken as the new reference: nothing is flushed.

// errSubscriptionEnded: the server unsubscribed us from a channel we did not leave (a sharded
// subscription whose slot moved or whose node was demoted).
var errSubscriptionEnded = errors.New("acicache: the server ended the subscription (the channels' slot moved or its node was demoted)")

// errTopology: the watch ended the subscription.
var errTopology = errors.New("acicache: cluster topology changed")

// slotRange is one range of the slot map and the master serving it (its node id, or its
// address when the server gives no id).
type slotRange struct {
	start, end int64
	master     string
}

type topology []slotRange

// newMasterSince is a master of t that was not a master in before ("" if none).
func (t topology) newMasterSince(before topology) string {
	for _, r := range t {
		if !slices.ContainsFunc(before, func(b slotRange) bool { return b.master == r.master }) {
			return r.master
		}
	}
	return ""
}

// masterOf is the master serving slot in t ("" if none).
func (t topology) masterOf(slot int64) string {
	for _, r := range t {
		if r.start <= slot && slot <= r.end {
			return r.master
		}
	}
	return ""
}

// keySlot is the cluster hash slot of a key or channel: CRC16 (XMODEM) of its {hash tag} or of
// the whole name, mod 16384.
func keySlot(key string) int64 {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int64(crc % 16384)
}

// publish sends one fleet message: SPUBLISH on a cluster in sharded mode, PUBLISH otherwise.
func (c *Cache) publish(ctx context.Context, channel string, msg []byte) error {
	if c.sharded {
		return c.rdb.SPublish(ctx, channel, msg).Err()
	}
	return c.rdb.Publish(ctx, channel, msg).Err()
}

// fetchTopology asks the master of the channels' slot for CLUSTER SLOTS: one observer, the same
// each time, so that nodes learning of a change at different moments do not make the map flap.
func (c *Cache) fetchTopology(ctx context.Context) (topology, error) {
	node, err := c.cluster.MasterForKey(ctx, c.n.invalidation)
	if err != nil {
		return nil, err
	}
	slots, err := node.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	t := make(topology, 0, len(slots))
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		m := s.Nodes[0].ID
		if m == "" {
			m = s.Nodes[0].Addr
		}
		t = append(t, slotRange{int64(s.Start), int64(s.End), m})
	}
	if len(t) == 0 {
		return nil, errors.New("acicache: CLUSTER SLOTS: empty slot map")
	}
	slices.SortFunc(t, func(a, b slotRange) int { return int(a.start - b.start) })
	return t, nil
}

// clusterSub is go-redis's PubSub on a cluster: SSUBSCRIBE (or SUBSCRIBE in classic mode) on the
// master of the channels' slot, with the slot map taken just before and one watch connection
// per master.
type clusterSub struct {
	goRedisSub
	topo topology // under the cache's psMu
	// wmu: a redis.Conn is for one goroutine at a time (the watch pings, close closes).
	wmu   sync.Mutex
	watch []*redis.Conn
}

func (s *clusterSub) close() error {
	err := s.goRedisSub.close()
	s.wmu.Lock()
	for _, w := range s.watch {
		_ = w.Close()
	}
	s.watch = nil
	s.wmu.Unlock()
	return err
}

// pingWatch pings every watch connection; an error is a connection dropped (a node crashed or
// restarted: a master restarted without persistence is empty) or a node that does not answer.
func (s *clusterSub) pingWatch(ctx context.Context) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, w := range s.watch {
		if err := w.Ping(ctx).Err(); err != nil {
			return err
		}
	}
	return nil
}

// openClusterSubscriber takes the slot map, opens a watch connection to every master, then
// subscribes. The map is taken before subscribing: a change while we subscribe is then caught
// at the first check rather than taken as the reference.
func (c *Cache) openClusterSubscriber(chans []string) (subscriber, error) {
	ctx, cancel := context.WithTimeout(c.ctx, max(c.s.tick, time.Second))
	defer cancel()
	topo, err := c.fetchTopology(ctx)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var watch []*redis.Conn
	// A master that cannot be reached now gets no watch connection: while it is down none of
	// its keys can be read (so none cached), and a failover shows in the slot map.
	_ = c.cluster.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		conn := node.Conn()
		if err := conn.Ping(ctx).Err(); err != nil {
			_ = conn.Close()
			return err
		}
		mu.Lock()
		watch = append(watch, conn)
		mu.Unlock()
		return nil
	})
	s := &clusterSub{topo: topo, watch: watch}
	s.timeout = c.s.livenessTimeout
	s.sharded = c.sharded
	if c.sharded {
		s.ps = c.cluster.SSubscribe(c.ctx, chans...)
	} else {
		s.ps = c.cluster.Subscribe(c.ctx, chans...)
	}
	return s, nil
}

// watchTopology runs every tick on a cluster (docs/WIRE.md 10.3).
func (c *Cache) watchTopology() {
	defer c.wg.Done()
	t := time.NewTicker(c.s.tick)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		c.checkTopology()
	}
}

func (c *Cache) checkTopology() {
	c.psMu.Lock()
	sub, _ := c.ps.(*clusterSub)
	var ref topology
	if sub != nil {
		ref = sub.topo
	}
	c.psMu.Unlock()
	ctx, cancel := context.WithTimeout(c.ctx, max(c.s.tick, time.Second))
	defer cancel()
	if sub == nil {
		// Not subscribed (the channels' master may be down, waiting for a failover): once the
		// master of the channels' slot answers again, the receive loop need not sit out its
		// backoff.
		if _, err := c.fetchTopology(ctx); err != nil {
			c.cluster.ReloadState(c.ctx)
		} else {
			select {
			case c.retryNow <- struct{}{}:
			default:
			}
		}
		return
	}
	reason := ""
	if err := sub.pingWatch(ctx); err != nil {
		if c.ctx.Err() != nil {
			return
		}
		reason = "the connection to a cluster node dropped: " + err.Error()
	}
	var now topology
	if reason == "" {
		var err error
		if now, err = c.fetchTopology(ctx); err != nil {
			// Asked again next tick, of the channels' master as go-redis will know it then; a
			// dead subscription shows as silence (section 5).
			c.cluster.ReloadState(c.ctx)
			return
		}
		if slices.Equal(now, ref) {
			return
		}
		// The client's own slot map (shared with the application) refreshes only on MOVED or
		// every ClusterStateReloadInterval (60 s by default): a write to a dead master's slots
		// keeps dialling it after its replica took over. What this map shows, it should know.
		c.cluster.ReloadState(c.ctx)
		if id := now.newMasterSince(ref); id != "" {
			reason = "a node became master (failover or a new node): " + id
		} else if slot := keySlot(c.n.invalidation); c.sharded && now.masterOf(slot) != ref.masterOf(slot) {
			// The server ends a sharded subscription whose slot leaves its node (sunsubscribe);
			// should that push not come, the map says it as well.
			reason = "the channels' slot moved to " + now.masterOf(slot)
		}
	}
	c.psMu.Lock()
	defer c.psMu.Unlock()
	if c.ps != sub {
		return
	}
	if reason == "" {
		// Slots moved between masters that were masters already: MIGRATE moves each key whole,
		// nothing is lost; the new map is the reference.
		c.s.logger.Info("acicache: cluster slot map changed between existing masters", "instance", c.snd.source)
		sub.topo = now
		return
	}
	c.c.topologyChanges.Add(1)
	c.s.logger.Warn("acicache: cluster topology changed, L1 flushed, resubscribing", "instance", c.snd.source, "reason", reason)
	// receive's read fails at once, drops the subscription (L1 suspended and flushed) and
	// opens a new one (flushed again when it serves).
	_ = sub.ps.Close()
}
