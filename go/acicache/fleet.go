package acicache

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

var (
	// renew extends the lease only while it is still ours (docs/WIRE.md 3).
	renewScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`)
	// release deletes the lease only while it is still ours.
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`)
)

const heartbeatMs = 1000

// setServing recomputes whether L1 may serve: subscribed and not lagging. Coming back, it
// starts empty.
func (c *Cache) setServing(subscribed, lagging *bool) {
	c.servingMu.Lock()
	defer c.servingMu.Unlock()
	was := c.subscribed && !c.lagging
	if subscribed != nil {
		c.subscribed = *subscribed
	}
	if lagging != nil {
		c.lagging = *lagging
	}
	now := c.subscribed && !c.lagging
	switch {
	case now && !was:
		c.l1.resume()
		c.c.flushes.Add(1)
	case !now && was:
		c.l1.suspend()
	}
}

func (c *Cache) channels() []string {
	ch := []string{c.n.invalidation, c.n.strategy, c.n.liveness}
	if c.ro.follow {
		ch = append(ch, c.n.policy)
	}
	if c.isController.Load() {
		ch = append(ch, c.n.reports)
	}
	return ch
}

// receive owns the subscription: it subscribes, waits for every confirmation, then reads
// until liveness_timeout passes without a message (its own heartbeat arrives every second)
// or the connection ends; then L1 stops serving and it resubscribes with capped exponential
// backoff and jitter (docs/WIRE.md 5). The connection is our own lean one for a standalone
// *redis.Client, go-redis's PubSub otherwise (sub.go).
func (c *Cache) receive() {
	defer c.wg.Done()
	backoff := 50 * time.Millisecond
	first := true
	for c.ctx.Err() == nil {
		if !first {
			c.c.resubscribes.Add(1)
		}
		first = false
		c.psMu.Lock()
		chans := c.channels()
		sub, err := c.openSubscriber(chans)
		if err == nil {
			c.ps, c.reportsSubscribed = sub, chans[len(chans)-1] == c.n.reports
		}
		c.psMu.Unlock()
		if err == nil {
			if err = c.awaitSubscribed(sub, len(chans)); err != nil {
				c.dropSubscription(sub)
			}
		}
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			c.s.logger.Warn("acicache: subscribe failed", "instance", c.snd.source, "err", err, "retry_in", backoff)
			if c.cluster != nil {
				// The channels' master as go-redis knows it may be gone (a failover): refresh
				// the slot map before the next attempt.
				c.cluster.ReloadState(c.ctx)
			}
			sleep := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(sleep):
			case <-c.retryNow: // the cluster watch saw the channels' master answer again
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		c.lossMu.Lock()
		c.loss.resubscribed()
		c.lossMu.Unlock()
		if c.ro.follow && c.c.resubscribes.Load() > 0 {
			c.ro.resubscribed() // an announcement may have been lost while not listening
		}
		up := true
		c.setServing(&up, nil)
		c.readyOne.Do(func() { close(c.ready) })
		for {
			ev, err := sub.next(c.ctx)
			if err != nil {
				if errors.Is(err, errSubscriptionEnded) {
					c.c.topologyChanges.Add(1)
				}
				if c.ctx.Err() == nil {
					c.s.logger.Warn("acicache: subscription lost", "instance", c.snd.source, "err", err)
				}
				break
			}
			c.deliver(sub, ev)
		}
		c.dropSubscription(sub)
	}
}

// deliver hands a message to handle; after one of our own, the subscriber may pause.
func (c *Cache) deliver(sub subscriber, ev event) {
	switch ev.kind {
	case evMessage:
		// Only our own invalidation says this instance is writing: a pause after our own
		// heartbeat would only delay the others' messages.
		if c.handle(ev.channel, ev.payload) && string(ev.channel) == c.n.invalidation {
			sub.handledOwn(c.ctx)
		}
	case evTooLarge:
		c.c.pubsubReceived.Add(1)
		c.malformedMessage(MalformedTooLarge, string(ev.channel), ev.size)
	}
}

func (c *Cache) dropSubscription(sub subscriber) {
	down := false
	c.setServing(&down, nil)
	c.psMu.Lock()
	if c.ps == sub {
		c.ps = nil
	}
	c.psMu.Unlock()
	_ = sub.close()
	if c.cluster != nil && c.ctx.Err() == nil {
		// The next subscription goes to the slot's master as go-redis knows it: refresh that
		// (asynchronously; a subscription sent to a node that lost the slot fails and is retried).
		c.cluster.ReloadState(c.ctx)
	}
}

func (c *Cache) awaitSubscribed(sub subscriber, n int) error {
	for got := 0; got < n; {
		ev, err := sub.next(c.ctx)
		if err != nil {
			return err
		}
		if ev.kind == evSubscribe {
			got++
		} else {
			c.deliver(sub, ev)
		}
	}
	return nil
}

// handle applies one delivered message (docs/WIRE.md 2, 4, 5) and reports whether it was one
// of our own. channel and payload are only read during the call (they may be the subscriber's
// read buffer).
func (c *Cache) handle(channel, payload []byte) bool {
	c.c.pubsubReceived.Add(1)
	if string(channel) == c.n.policy && c.ro.follow {
		c.ro.onAnnouncement(string(payload)) // our own (an automatic rollback) included
		return false
	}
	// Our own messages (one per eager write comes back to us) only tell the lag: read their
	// timestamp without decoding the rest. The exact bytes `,"source":"<id>"` cannot occur
	// inside a JSON string (its quotes would be escaped), only as a member.
	if ts, ok := ownTimestamp(payload, c.ownTag); ok {
		c.measureLag(ts)
		return true
	}
	m, bad := decode(payload)
	if bad != "" {
		c.malformedMessage(bad, string(channel), len(payload))
		return false
	}
	if m.source == c.snd.source {
		c.measureLag(m.timestamp)
		return true
	}
	c.c.messagesReceived.Add(1)
	now := int64(c.nowMs())
	lost := false
	c.lossMu.Lock()
	switch m.action {
	case actInvalidate, actFlush:
		if m.hasSeq {
			lost = c.loss.message(m.source, m.epoch, m.seq, now)
		}
	case actMark, actStrategyUpdate, actWriteReport:
		if m.hasInvalSeq {
			lost = c.loss.position(m.source, m.epoch, m.invalSeq, now)
		}
	}
	c.lossMu.Unlock()
	if lost {
		c.lostInvalidation()
	}
	switch m.action {
	case actInvalidate:
		for _, k := range m.keys {
			if uk, ok := c.n.userKey(k); ok {
				c.l1.invalidate(uk)
				c.c.invalidationsApplied.Add(1)
			}
		}
	case actFlush:
		c.l1.flush()
		c.c.flushes.Add(1)
	case actStrategyUpdate:
		if c.isController.Load() {
			return false // two controllers may overlap for one lease period; ours decides here
		}
		c.announcedRate.Store(math.Float64bits(m.writeRate))
		c.lastControllerNews.Store(now)
		c.controllerSilent.Store(false)
		c.pol.follow(m.strategy, uint64(now))
		c.noteStrategy(m.strategy)
	case actWriteReport:
		if c.isController.Load() {
			for {
				old := c.remote.Load()
				sum := old + m.count
				if sum < old {
					sum = math.MaxUint64
				}
				if c.remote.CompareAndSwap(old, sum) {
					break
				}
			}
		}
	}
	return false
}

// malformedMessage counts a refused message and logs the first of each kind (docs/WIRE.md 2.3).
func (c *Cache) malformedMessage(bad Malformed, channel string, size int) {
	c.c.malformed.Add(1)
	c.malformedMu.Lock()
	seen := c.malformedSeen[bad]
	c.malformedSeen[bad] = true
	c.malformedMu.Unlock()
	if !seen {
		c.s.logger.Warn("acicache: malformed message ignored (logged once per kind)", "instance", c.snd.source,
			"kind", string(bad), "channel", channel, "bytes", size)
	}
}

var tsMember = []byte(`,"timestamp":`)

// ownTimestamp recognises a message in this host's own encoding (sender.finish) from source
// tag, and returns its timestamp.
func ownTimestamp(payload, tag []byte) (float64, bool) {
	if len(payload) > maxPayload {
		return 0, false
	}
	i := bytes.Index(payload, tag)
	if i < 0 {
		return 0, false
	}
	j := bytes.LastIndex(payload[:i], tsMember)
	if j < 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(payload[j+len(tsMember):i]), 64)
	if err != nil {
		return 0, false
	}
	return v, true
}

func (c *Cache) lostInvalidation() {
	c.c.gaps.Add(1)
	c.c.flushes.Add(1)
	c.l1.flush()
	c.s.logger.Warn("acicache: lost invalidation detected, L1 flushed", "instance", c.snd.source)
}

// measureLag uses our own messages, stamped by our own clock: above max_lag L1 stops serving
// until the lag is under half of it again.
func (c *Cache) measureLag(ts float64) {
	if ts <= 0 {
		return
	}
	lag := time.Duration((unixSeconds() - ts) * float64(time.Second))
	c.servingMu.Lock()
	lagging := c.lagging
	c.servingMu.Unlock()
	switch {
	case !lagging && lag > c.s.maxLag:
		c.c.lagSuspensions.Add(1)
		c.s.logger.Warn("acicache: subscription lags, L1 suspended", "instance", c.snd.source, "lag", lag)
		t := true
		c.setServing(nil, &t)
	case lagging && lag < c.s.maxLag/2:
		f := false
		c.setServing(nil, &f)
	}
}

func (c *Cache) setReports(on bool) {
	c.psMu.Lock()
	defer c.psMu.Unlock()
	if c.ps == nil || c.reportsSubscribed == on {
		return
	}
	var err error
	if on {
		err = c.ps.subscribe(c.ctx, c.n.reports)
	} else {
		err = c.ps.unsubscribe(c.ctx, c.n.reports)
	}
	if err == nil {
		c.reportsSubscribed = on
	}
}

func (c *Cache) promote(ctx context.Context, now uint64) {
	if c.isController.Swap(true) {
		return
	}
	c.setReports(true)
	c.remote.Store(0)
	c.pol.lead(now)
	// Primed with the fleet rate last announced, so a takeover under load does not switch
	// down for lack of history.
	if rate := math.Float64frombits(c.announcedRate.Load()); rate > 0 {
		n := math.Round(rate * float64(c.pol.windowMs()) / 1000)
		c.pol.recordRemote(uint32(min(n, maxReportSize)), now)
	}
	c.noteStrategy(c.pol.status(now).Strategy)
	c.s.logger.Info("acicache: controller", "instance", c.snd.source)
}

func (c *Cache) demote(ctx context.Context, now uint64) {
	wasController := c.isController.Swap(false)
	c.setReports(false)
	// A follower starts eager, the strategy that never leaves a reader stale, until it hears
	// the controller.
	c.pol.follow(policy.StrategyEager, now)
	c.noteStrategy(policy.StrategyEager)
	c.lastControllerNews.Store(int64(now))
	if wasController {
		c.s.logger.Info("acicache: lost the lease, following", "instance", c.snd.source)
	}
}

func (c *Cache) tickLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.s.tick)
	defer t.Stop()
	var st tickState
	st.lastAnnounced = -1
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		c.tick(&st)
	}
}

type tickState struct {
	marked        uint64
	lastAnnounced int // strategy; -1: none yet
	announcedAt   uint64
	heartbeatAt   uint64
	wasController bool
}

func (c *Cache) tick(st *tickState) {
	ctx, cancel := context.WithTimeout(c.ctx, max(c.s.tick, time.Second))
	defer cancel()
	now := c.nowMs()

	c.lossMu.Lock()
	lost := c.loss.tick(int64(now))
	c.lossMu.Unlock()
	if lost {
		c.lostInvalidation()
	}

	if c.s.role == RoleAuto {
		if c.isController.Load() {
			n, err := renewScript.Run(ctx, c.rdb, []string{c.n.lease}, c.snd.source, c.s.controllerTimeout.Milliseconds()).Int64()
			if err == nil && n == 0 {
				c.demote(ctx, now)
			}
		} else if ok, err := c.rdb.SetNX(ctx, c.n.lease, c.snd.source, c.s.controllerTimeout).Result(); err == nil && ok {
			c.promote(ctx, now)
		}
	}
	// What this tick announces (docs/WIRE.md 4): taken before it hands out seqs of its own.
	pos := c.position()
	controller := c.isController.Load()
	if controller && !st.wasController {
		st.lastAnnounced = -1
	}
	st.wasController = controller

	if controller {
		if n := c.remote.Swap(0); n > 0 {
			c.pol.recordRemote(uint32(min(n, maxReportSize)), now)
		}
	} else {
		if n := c.unreported.Swap(0); n > 0 {
			if err := c.publish(ctx, c.n.reports, c.snd.writeReport(n, pos)); err == nil {
				c.c.messagesSent.Add(1)
			}
		}
		if last := c.lastControllerNews.Load(); int64(now)-last > c.s.controllerTimeout.Milliseconds() && !c.controllerSilent.Swap(true) {
			c.c.controllerLost.Add(1)
			c.s.logger.Warn("acicache: no controller heard, following eager", "instance", c.snd.source)
			c.pol.follow(policy.StrategyEager, now)
		}
	}
	if controller {
		c.unreported.Store(0)
	}

	// Writes made under eager since the last tick, counted by the policy in one call (they
	// move the rate; under eager nothing is buffered: cache.go Set).
	if n := c.eagerWrites.Swap(0); n > 0 {
		c.pol.recordRemote(uint32(min(n, maxReportSize)), now)
	}
	snap := c.pol.status(now)
	c.writeRate.Store(math.Float64bits(snap.WriteRate))
	c.noteStrategy(snap.Strategy)

	if c.needFlush.Load() {
		_ = c.publishFlush(ctx)
	}
	_ = c.publishBatch(ctx, c.pol.drain(now, false))

	if controller && (int(snap.Strategy) != st.lastAnnounced || now-st.announcedAt >= heartbeatMs) {
		msg := c.snd.strategyUpdate(snap.Strategy, snap.WriteRate, pos)
		if err := c.publish(ctx, c.n.strategy, msg); err == nil {
			c.c.messagesSent.Add(1)
			st.lastAnnounced, st.announcedAt = int(snap.Strategy), now
		}
	}
	if now-st.heartbeatAt >= heartbeatMs || st.heartbeatAt == 0 {
		if err := c.publish(ctx, c.n.liveness, c.snd.heartbeat()); err == nil {
			c.c.messagesSent.Add(1)
			st.heartbeatAt = max(now, 1)
		}
	}
	if !c.publishedSinceTick.Swap(false) && pos > st.marked {
		if err := c.publish(ctx, c.n.invalidation, c.snd.mark(pos)); err == nil {
			c.c.messagesSent.Add(1)
			st.marked = pos
		}
	}
}

// publishBatch publishes a drained batch: one flush for FlushAll, else messages of at most
// 10,000 keys.
func (c *Cache) publishBatch(ctx context.Context, b policy.Batch) error {
	if b.FlushAll {
		return c.publishInval(ctx, c.snd.flush)
	}
	var errs []error
	for keys := b.Keys; len(keys) > 0; {
		chunk := keys[:min(len(keys), maxSendKeys)]
		keys = keys[len(chunk):]
		errs = append(errs, c.publishInval(ctx, func(seq uint64) []byte {
			return c.snd.invalidate(chunk, policy.StrategyBatched, seq)
		}))
	}
	return errors.Join(errs...)
}
