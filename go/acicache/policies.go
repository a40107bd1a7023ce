package acicache

import (
	"embed"
	"fmt"
	"io/fs"
	"sync"

	"github.com/aci-cache/aci-cache/go/policy"
)

// The bundled policies, copied here by go/setup.sh from the list in guest/policies.txt. The
// README keeps the directory (and so the embed pattern) valid before setup has run.
//
//go:embed policies
var bundled embed.FS

// BundledPolicy returns the embedded component of a bundled policy ("adaptive", "fixed").
func BundledPolicy(name string) ([]byte, error) {
	b, err := fs.ReadFile(bundled, "policies/"+name+".wasm")
	if err != nil {
		return nil, fmt.Errorf("acicache: bundled policy %q not embedded (run go/setup.sh, which copies target/policies/*.wasm listed in guest/policies.txt): %w", name, err)
	}
	return b, nil
}

// Compiling a component takes milliseconds; caches in one process share the compiled code
// (each gets its own instance).
var compiled struct {
	sync.Mutex
	byName map[string]*policy.Module
}

func bundledModule(name string) (*policy.Module, error) {
	compiled.Lock()
	defer compiled.Unlock()
	if m := compiled.byName[name]; m != nil {
		return m, nil
	}
	wasm, err := BundledPolicy(name)
	if err != nil {
		return nil, err
	}
	m, err := policy.Compile(wasm)
	if err != nil {
		return nil, err
	}
	if compiled.byName == nil {
		compiled.byName = map[string]*policy.Module{}
	}
	compiled.byName[name] = m
	return m, nil
}
