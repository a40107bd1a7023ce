package policy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/aci-cache/aci-cache/go/internal/enginebench"
	"github.com/aci-cache/aci-cache/go/policy"
)

// BenchmarkEngineCall runs the per-call benchmarks that cmd/enginebench reports, under
// `go test -bench .`, with the default deadline per call.
func BenchmarkEngineCall(b *testing.B) {
	for _, op := range enginebench.Ops {
		b.Run(op.Name, func(b *testing.B) {
			op.Bench(b, newEngine(b, "adaptive"))
		})
	}
}

// BenchmarkEngineCallUnbounded is BenchmarkEngineCall without the deadline
// (policy.WithoutCallTimeout), which shows what the deadline costs.
func BenchmarkEngineCallUnbounded(b *testing.B) {
	wasm, err := os.ReadFile(filepath.Join(policyDir(b), "adaptive.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	m, err := policy.Compile(wasm, policy.WithoutCallTimeout())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	for _, op := range enginebench.Ops {
		b.Run(op.Name, func(b *testing.B) {
			e, err := m.Instantiate()
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			op.Bench(b, e)
		})
	}
}
