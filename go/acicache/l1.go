package acicache

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// l1 is the near cache: a bounded in-process copy of Redis values, keyed by user key (one
// Cache is one namespace, so the hit path builds no Redis key and allocates nothing).
//
// The rules that make it safe to serve from, as in the Rust host:
//   - every entry expires by its own deadline, never later than the key's Redis PTTL read
//     with the value (or the TTL just written);
//   - flush is O(1): entries carry the generation they were filled in, and bumping the
//     generation makes all of them unreachable at once;
//   - a fill that raced an invalidation of its key never installs the old value: each key
//     hashes to a stripe counter that every invalidation bumps; a fill installs only if the
//     counter and the generation it read before going to Redis are unchanged, checked under
//     the shard lock that the invalidation's removal also takes;
//   - nothing is served while serving is false (link down, lagging, not yet subscribed).
//
// The store is a sharded map of its own (64 shards, each a Go map under an RWMutex) rather
// than otter, theine or ristretto: a hit here is a maphash, an RLock and a map lookup (about
// 30-40 ns measured, see BenchmarkL1), while those libraries add admission/policy work per
// read that this cache does not need (invalidation, not capacity, is what ends most entries
// here). Eviction when a shard is over its budget drops sampled entries, dead ones first,
// else the one closest to expiry: O(1), and bounded by entries and bytes.
type l1 struct {
	seed       maphash.Seed
	shards     [l1Shards]l1Shard
	stripes    [l1Stripes]atomic.Uint64
	generation atomic.Uint64
	serving    atomic.Bool
	start      time.Time

	maxEntriesPerShard int
	maxBytesPerShard   int64
	maxValueBytes      int
}

const (
	l1Shards      = 64
	l1Stripes     = 4096
	entryOverhead = 96 // map slot, entry struct and string headers, charged per entry
)

type l1Shard struct {
	mu    sync.RWMutex
	m     map[string]*l1Entry
	bytes int64
	_     [32]byte // keep hot shards' locks on separate cache lines
}

type l1Entry struct {
	value      string
	generation uint64
	expires    int64 // ns since l1.start
}

// fillToken proves when a fill started; see beginFill.
type fillToken struct {
	stripe     uint32
	counter    uint64
	generation uint64
}

func newL1(maxEntries int, maxBytes int64) *l1 {
	c := &l1{seed: maphash.MakeSeed(), start: time.Now()}
	c.maxEntriesPerShard = max(1, maxEntries/l1Shards)
	c.maxBytesPerShard = max(1024, maxBytes/l1Shards)
	// One value may take at most an eighth of a shard, so one huge value cannot evict the rest.
	c.maxValueBytes = int(c.maxBytesPerShard / 8)
	for i := range c.shards {
		c.shards[i].m = make(map[string]*l1Entry)
	}
	return c
}

func (c *l1) now() int64 { return int64(time.Since(c.start)) }

func (c *l1) hash(key string) uint64 { return maphash.String(c.seed, key) }

// get is the hit path: no allocation, no I/O.
func (c *l1) get(key string) (string, bool) {
	if !c.serving.Load() {
		return "", false
	}
	h := c.hash(key)
	s := &c.shards[h%l1Shards]
	s.mu.RLock()
	e := s.m[key]
	s.mu.RUnlock()
	if e == nil {
		return "", false
	}
	if e.generation != c.generation.Load() || e.expires <= c.now() {
		c.removeIf(s, key, e)
		return "", false
	}
	return e.value, true
}

func (c *l1) removeIf(s *l1Shard, key string, e *l1Entry) {
	s.mu.Lock()
	if s.m[key] == e {
		delete(s.m, key)
		s.bytes -= weight(key, e.value)
	}
	s.mu.Unlock()
}

func weight(key, value string) int64 { return int64(len(key) + len(value) + entryOverhead) }

// beginFill is called before reading key from Redis.
func (c *l1) beginFill(key string) fillToken {
	st := uint32(c.hash(key) >> 32 % l1Stripes)
	return fillToken{stripe: st, counter: c.stripes[st].Load(), generation: c.generation.Load()}
}

// completeFill installs a value read from Redis unless an invalidation or flush happened
// since tok was taken. ttl is already capped by the key's PTTL.
func (c *l1) completeFill(tok fillToken, key, value string, ttl time.Duration) bool {
	if !c.serving.Load() || ttl <= 0 || len(value) > c.maxValueBytes {
		return false
	}
	h := c.hash(key)
	s := &c.shards[h%l1Shards]
	e := &l1Entry{value: value, generation: tok.generation, expires: c.now() + int64(ttl)}
	s.mu.Lock()
	// Invalidations bump the stripe before taking this lock to remove the key, so a bump that
	// this check misses is followed by a removal that finds our entry.
	if c.stripes[tok.stripe].Load() != tok.counter || c.generation.Load() != tok.generation {
		s.mu.Unlock()
		return false
	}
	c.insertLocked(s, key, e)
	s.mu.Unlock()
	return true
}

// putOwnWrite installs the writer's own new value (read-your-writes). The stripe bump first
// makes a fill of the previous value still in flight fail.
func (c *l1) putOwnWrite(key, value string, ttl time.Duration) {
	h := c.hash(key)
	c.stripes[uint32(h>>32%l1Stripes)].Add(1)
	s := &c.shards[h%l1Shards]
	s.mu.Lock()
	if ttl <= 0 || len(value) > c.maxValueBytes {
		if old := s.m[key]; old != nil {
			delete(s.m, key)
			s.bytes -= weight(key, old.value)
		}
	} else {
		c.insertLocked(s, key, &l1Entry{value: value, generation: c.generation.Load(), expires: c.now() + int64(ttl)})
	}
	s.mu.Unlock()
}

func (c *l1) insertLocked(s *l1Shard, key string, e *l1Entry) {
	if old := s.m[key]; old != nil {
		s.bytes -= weight(key, old.value)
	}
	s.m[key] = e
	s.bytes += weight(key, e.value)
	if len(s.m) > c.maxEntriesPerShard || s.bytes > c.maxBytesPerShard {
		c.evictLocked(s, key)
	}
}

// evictLocked drops entries until the shard is within budget: among a few sampled (Go's map
// iteration starts at a random slot), a dead one (old generation or expired) if any, else the
// one that expires first. Never the key just inserted.
func (c *l1) evictLocked(s *l1Shard, keep string) {
	gen, now := c.generation.Load(), c.now()
	for len(s.m) > c.maxEntriesPerShard || s.bytes > c.maxBytesPerShard {
		victim, found := "", false
		var victimExp int64
		n := 0
		for k, e := range s.m {
			if k == keep {
				continue
			}
			if e.generation != gen || e.expires <= now {
				victim, found = k, true
				break
			}
			if !found || e.expires < victimExp {
				victim, victimExp, found = k, e.expires, true
			}
			if n++; n >= 5 {
				break
			}
		}
		if !found {
			return
		}
		s.bytes -= weight(victim, s.m[victim].value)
		delete(s.m, victim)
	}
}

// invalidate drops key (a received invalidation or a local delete).
func (c *l1) invalidate(key string) {
	h := c.hash(key)
	c.stripes[uint32(h>>32%l1Stripes)].Add(1)
	s := &c.shards[h%l1Shards]
	s.mu.Lock()
	if e := s.m[key]; e != nil {
		delete(s.m, key)
		s.bytes -= weight(key, e.value)
	}
	s.mu.Unlock()
}

// flush makes every entry unreachable in O(1); memory comes back as entries are read or
// evicted.
func (c *l1) flush() { c.generation.Add(1) }

// suspend stops serving until resume (and flushes).
func (c *l1) suspend() {
	c.serving.Store(false)
	c.flush()
}

// resume serves again, starting empty.
func (c *l1) resume() {
	c.flush()
	c.serving.Store(true)
}

func (c *l1) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
