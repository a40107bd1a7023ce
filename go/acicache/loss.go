package acicache

// lossDetector is docs/WIRE.md section 4's reference algorithm: per sender, a 64-seq window
// of what arrived, and a hole that may wait reorderAllowance before it counts as a loss. Not
// safe for concurrent use: the owner locks it.
type lossDetector struct {
	sources map[string]*lossState
}

type lossState struct {
	epoch     string
	max       uint64
	received  uint64 // bit i: seq max-i received
	holeSince int64  // ms; -1: no hole
	lastHeard int64
}

const (
	reorderAllowanceMs = 250
	maxKnownSources    = 4096
)

func newLossDetector() *lossDetector { return &lossDetector{sources: map[string]*lossState{}} }

// message records invalidation message seq of (source, epoch) at nowMs; it returns true on a
// loss (the caller then flushes L1; every hole is already marked filled).
func (d *lossDetector) message(source, epoch string, seq uint64, nowMs int64) bool {
	return d.see(source, epoch, seq, nowMs, true)
}

// position records that (source, epoch) has sent everything up to seq (a mark, a
// strategy_update or a write_report).
func (d *lossDetector) position(source, epoch string, seq uint64, nowMs int64) bool {
	return d.see(source, epoch, seq, nowMs, false)
}

func (d *lossDetector) see(source, epoch string, seq uint64, nowMs int64, isMessage bool) bool {
	st, known := d.sources[source]
	if !known {
		if len(d.sources) >= maxKnownSources {
			d.forgetOldest()
		}
		d.sources[source] = &lossState{epoch: epoch, max: seq, received: ^uint64(0), holeSince: -1, lastHeard: nowMs}
		return false
	}
	st.lastHeard = nowMs
	if st.epoch != epoch {
		st.epoch, st.max, st.received, st.holeSince = epoch, seq, 1, -1
		d.fillAll()
		return true
	}
	if seq > st.max {
		if seq-st.max >= 64 {
			st.max, st.received, st.holeSince = seq, 1, -1
			d.fillAll()
			return true
		}
		st.received <<= seq - st.max
		st.max = seq
		if isMessage {
			st.received |= 1
		}
	} else {
		if st.max-seq >= 64 {
			return false
		}
		if isMessage {
			st.received |= 1 << (st.max - seq)
		}
	}
	if st.hasHole() {
		if st.holeSince < 0 {
			st.holeSince = nowMs
		}
	} else {
		st.holeSince = -1
	}
	return false
}

// hasHole: a clear bit among the seqs 1..max within the window.
func (st *lossState) hasHole() bool {
	mask := ^uint64(0)
	if st.max < 64 {
		mask = 1<<st.max - 1
	}
	return st.received&mask != mask
}

// tick declares every hole older than the reorder allowance a loss.
func (d *lossDetector) tick(nowMs int64) bool {
	for _, st := range d.sources {
		if st.holeSince >= 0 && nowMs-st.holeSince >= reorderAllowanceMs {
			d.fillAll()
			return true
		}
	}
	return false
}

// fillAll: after a loss L1 is flushed, so what else was missed is moot.
func (d *lossDetector) fillAll() {
	for _, st := range d.sources {
		st.received, st.holeSince = ^uint64(0), -1
	}
}

// resubscribed forgets every sender: positions are unknown after a gap in listening.
func (d *lossDetector) resubscribed() { clear(d.sources) }

func (d *lossDetector) forgetOldest() {
	var oldest string
	first := true
	var at int64
	for src, st := range d.sources {
		if first || st.lastHeard < at {
			oldest, at, first = src, st.lastHeard, false
		}
	}
	delete(d.sources, oldest)
}
