package policy_test

import (
	"testing"

	"github.com/aci-cache/aci-cache/go/internal/enginebench"
)

// BenchmarkEngineCall runs the per-call benchmarks that cmd/enginebench reports, under
// `go test -bench .`.
func BenchmarkEngineCall(b *testing.B) {
	for _, op := range enginebench.Ops {
		b.Run(op.Name, func(b *testing.B) {
			op.Bench(b, newEngine(b, "adaptive"))
		})
	}
}
