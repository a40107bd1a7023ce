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

// Ops are the calls every host reports, in the order reported. Each runs on a fresh instance
// of the adaptive policy.
var Ops = []Op{
	{"record-write", RecordWrite},
	{"status", Status},
	{"pending-batch-100", PendingBatch100},
}

// RecordWrite: one write of a short key, the call a host makes per write. Time advances 1 ms
// per call, so the rate soon exceeds the default high threshold and the engine is eager: what
// is measured is the boundary crossing and the count, not buffering.
func RecordWrite(b *testing.B, e *policy.Engine) {
	var now uint64
	for b.Loop() {
		now++
		e.RecordWrite("user:42", now)
	}
	check(b, e)
}

// Status: the once-per-tick snapshot, a record of six fields returned through memory.
func Status(b *testing.B, e *policy.Engine) {
	var now uint64
	for b.Loop() {
		now++
		e.Status(now)
	}
	check(b, e)
}

// PendingBatch100: draining a batch of 100 short keys, i.e. lifting a list of 100 strings.
// Refilling the buffer (one RecordWrites of the same 100 keys) is not timed.
func PendingBatch100(b *testing.B, e *policy.Engine) {
	cfg := e.DefaultConfig()
	cfg.BatchMaxKeys = 100
	if err := e.Configure(cfg, 0); err != nil {
		b.Fatal(err)
	}
	// Following keeps the strategy batched whatever rate the refills make.
	e.Follow(policy.StrategyBatched, 0)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
	}
	var now uint64
	for b.Loop() {
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
