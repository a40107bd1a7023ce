// Command enginebench prints the cost of a call into the strategy engine from Go, one line per
// call kind, in the format the project's scripts collect from every host:
//
//	engine-call go <op> <nanoseconds per call>
//
// The policy is adaptive.wasm in -dir (default: $ACI_POLICY_DIR, else target/policies in the
// repository that contains the working directory). Calls run under the deadline per call set by
// -call-timeout (default policy.DefaultCallTimeout; 0 measures them without one).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/aci-cache/aci-cache/go/internal/enginebench"
	"github.com/aci-cache/aci-cache/go/policy"
)

func main() {
	dir := flag.String("dir", os.Getenv("ACI_POLICY_DIR"), "directory holding adaptive.wasm")
	timeout := flag.Duration("call-timeout", policy.DefaultCallTimeout, "deadline per call into the policy; 0 for none")
	flag.Parse()
	opt := policy.WithCallTimeout(*timeout)
	if *timeout == 0 {
		opt = policy.WithoutCallTimeout()
	}
	if err := run(*dir, opt); err != nil {
		fmt.Fprintln(os.Stderr, "enginebench:", err)
		os.Exit(1)
	}
}

func run(dir string, opts ...policy.Option) error {
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		dir = filepath.Join(root, "target", "policies")
	}
	m, err := policy.CompileFile(filepath.Join(dir, "adaptive.wasm"), opts...)
	if err != nil {
		return err
	}
	defer m.Close()
	for _, op := range enginebench.Ops {
		e, err := m.Instantiate()
		if err != nil {
			return err
		}
		failed := false
		r := testing.Benchmark(func(b *testing.B) {
			op.Bench(b, e)
			failed = b.Failed()
		})
		_ = e.Close()
		if failed || r.N == 0 {
			return fmt.Errorf("%s: benchmark failed", op.Name)
		}
		fmt.Printf("engine-call go %s %.1f\n", op.Name, float64(r.T.Nanoseconds())/float64(r.N))
	}
	return nil
}

// repoRoot finds the repository from the working directory by its WIT contract.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "wit", "policy.wit")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (with wit/policy.wit) not found; pass -dir")
		}
		dir = parent
	}
}
