// Package enginebench measures the cost of a call into the strategy engine. The same
// benchmark bodies serve `go test -bench` and cmd/enginebench, which prints the lines that
// the project's scripts collect from every host.
package enginebench

import (
	"fmt"
	"testing"

	"github.com/aci-cache/aci-cache/go/policy"
)

// Op is one measured engine call.
type Op struct {
	Name  string // as printed: engine-call go <Name> <ns per call>
	Bench func(b *testing.B, e *policy.Engine)
}

// T0 is the policy clock (ms) at the start of every op, the same in every host's engine bench.
const T0 uint64 = 1_700_000_000_000

// Ops are the calls every host reports, in the order reported, with the same setup in every
// host (scripts/bench-engines.sh compares them row by row). Each runs on a fresh instance of
// the adaptive policy.
var Ops = []Op{
	{"record-write", RecordWrite},
	{"status", Status},
	{"pending-batch-100", PendingBatch100},
}

// RecordWrite: one write of a short key ("user:42"), the call a host makes per write. The
// clock advances 1 ms every 16 calls (~16,000 writes/s), so the engine settles on eager: what
// is measured is the boundary crossing and the count, not buffering.
func RecordWrite(b *testing.B, e *policy.Engine) {
	var i uint64
	for b.Loop() {
		e.RecordWrite("user:42", T0+i>>4)
		i++
	}
	check(b, e)
}

// Status: the once-per-tick snapshot, a record of six fields returned through memory. One
// untimed record-remote-writes(100, T0) first; the clock advances 1 ms per call.
func Status(b *testing.B, e *policy.Engine) {
	e.RecordRemoteWrites(100, T0)
	var i uint64
	for b.Loop() {
		e.Status(T0 + i)
		i++
	}
	check(b, e)
}

// PendingBatch100: draining a batch of 100 short keys, i.e. lifting a list of 100 strings.
// Configured batched with batch-max-keys 100 (thresholds 0 and 1e12, so it stays batched);
// refilling the buffer (one RecordWrites of user:1000..user:1099) is not timed.
func PendingBatch100(b *testing.B, e *policy.Engine) {
	cfg := e.DefaultConfig()
	cfg.BatchMaxKeys = 100
	cfg.LowThreshold = 0
	cfg.HighThreshold = 1e12
	cfg.InitialStrategy = policy.StrategyBatched
	if err := e.Configure(cfg, T0); err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", 1000+i)
	}
	now := T0
	for b.Loop() {
		// StopTimer/StartTimer each read the runtime's memory stats (a stop-the-world): that
		// is outside the timed region, but the GC state it leaves is not; see the note in
		// scripts/bench-engines.sh.
		b.StopTimer()
		now++
		e.RecordWrites(keys, now)
		b.StartTimer()
		if batch := e.PendingBatch(now); len(batch.Keys) != len(keys) {
			b.Fatalf("pending-batch returned %d keys, want %d", len(batch.Keys), len(keys))
		}
	}
	check(b, e)
}

func check(b *testing.B, e *policy.Engine) {
	if err := e.Err(); err != nil {
		b.Fatal(err)
	}
}
